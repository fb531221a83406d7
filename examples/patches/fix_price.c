/* The fix for examples/programs/service.c and live_service.c: apply the
 * program's discount to orders of 10 items or more.  Calls the program's
 * unit_price() and reads its static discount_percent. */
#include <armlp/livepatch.h>

ARMLP_PATCH("fix-price");

extern int unit_price(int item);
extern int discount_percent;

int price_fixed(int items)
{
	int total = items * unit_price(items);
	if (items >= 10)
		total -= total * discount_percent / 100;
	return total;
}

ARMLP_REPLACE(price, price_fixed);
