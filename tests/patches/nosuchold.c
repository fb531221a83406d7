#include <armlp/livepatch.h>
int ghost_v2(int x) { return x; }
ARMLP_REPLACE(ghost, ghost_v2);
