/* tests/programs/busy.c: a patch of the function one thread never leaves. */
#include <armlp/livepatch.h>
ARMLP_PATCH("busy-forever");
void forever_v2(volatile unsigned *h) { *h = 0; }
int tick_v2(int x) { return x + 2; }
ARMLP_REPLACE(forever, forever_v2);
ARMLP_REPLACE(tick, tick_v2);
