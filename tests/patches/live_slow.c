/* For tests/programs/live_target.c: price(10) becomes 1002 after a 1.5 s
 * sleep, so a thread is inside the patch (its stack returns into it) when
 * the test disables it. */
#include <time.h>
#include <armlp/livepatch.h>

ARMLP_PATCH("live-slow");

int price_v2(int items)
{
	struct timespec ts = { 1, 500000000 };
	nanosleep(&ts, NULL);
	return items * 100 + 2;
}

ARMLP_REPLACE(price, price_v2);
