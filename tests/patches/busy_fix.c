/* tests/programs/busy.c: tick() returns a value the workers count as new. */
#include <armlp/livepatch.h>
ARMLP_PATCH("busy-fix");
int tick_v2(int x) { return x + 2; }
ARMLP_REPLACE(tick, tick_v2);
