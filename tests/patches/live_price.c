/* For tests/programs/live_target.c: price(10) becomes 1001 (from 1000). */
#include <armlp/livepatch.h>

ARMLP_PATCH("live-price");

int price_v2(int items)
{
	return items * 100 + 1;
}

ARMLP_REPLACE(price, price_v2);
