/* The demo service: every tick it prints the price of an order.  The bug:
 * price() forgets the 10% discount for orders of 10 items or more. */
#include "armlp_fs.h"

static int discount_percent __attribute__((used)) = 10;   /* a static the fix reads */

FS_NOINLINE int unit_price(int item) { return 100 + item % 7; }

FS_NOINLINE int price(int items)
{
	return items * unit_price(items);   /* BUG: no discount */
}

int main(void)
{
	fs_print("orders of 10+ items get ");
	fs_print_int(discount_percent);
	fs_print("% off\n");
	for (int tick = 0; tick < 12; tick++) {
		int items = 10 + tick % 3;
		fs_print("tick ");
		fs_print_int(tick);
		fs_print(": price(");
		fs_print_int(items);
		fs_print(") = ");
		fs_print_int(price(items));
		fs_print("\n");
		fs_sleep_ns(100000000);       /* 100 ms */
	}
	return 0;
}
