/* rec(n) counts by 10 instead of 1. */
#include <armlp/livepatch.h>
ARMLP_PATCH("rec");
int rec_v2(int n) { return n <= 0 ? 0 : 10 + rec_v2(n - 1); }
ARMLP_REPLACE(rec, rec_v2);
