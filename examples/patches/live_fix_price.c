/* The fix for live_service.c: apply the program's discount. */
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
