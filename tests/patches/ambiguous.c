#include <armlp/livepatch.h>
int helper_v2(int x) { return x; }
ARMLP_REPLACE(helper, helper_v2);
