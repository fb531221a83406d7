/* For tests/programs/live_target.c: untraced() has no mcount site. */
#include <armlp/livepatch.h>

ARMLP_PATCH("live-untraced");

int untraced_v2(int x)
{
	return x * 3;
}

ARMLP_REPLACE(untraced, untraced_v2);
