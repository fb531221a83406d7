/* Replaces price() with code that faults: the program must die of its
 * SIGSEGV, as it would without armlp (tests/test_live_signals.py). */
#include <armlp/livepatch.h>

ARMLP_PATCH("price-fault");

int price_fault(int items)
{
	return *(volatile int *)0 + items;
}

ARMLP_REPLACE(price, price_fault);
