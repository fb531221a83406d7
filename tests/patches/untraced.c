#include <armlp/livepatch.h>
int untraced_v2(int x) { return x + 1; }
ARMLP_REPLACE(untraced, untraced_v2);
