/* Replaces price() of tests/programs/blocking.c: three times the price. */
#include <armlp/livepatch.h>

ARMLP_PATCH("price-x3");

int price_x3(int items)
{
	return items * 300;
}

ARMLP_REPLACE(price, price_x3);
