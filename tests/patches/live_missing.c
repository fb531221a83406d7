/* For tests/programs/live_target.c: calls a function the program lacks. */
#include <armlp/livepatch.h>

ARMLP_PATCH("live-missing");

extern int no_such_function(int);

int price_m(int items)
{
	return no_such_function(items);
}

ARMLP_REPLACE(price, price_m);
