/* Replaces the second static helper() (lp_other.c's) only. */
#include <armlp/livepatch.h>
ARMLP_PATCH("helper2");
int helper2_v2(int x) { return x * 30; }
ARMLP_REPLACE_POS(helper, 2, helper2_v2);
