/* Calls a static function and reads a static variable of the program. */
#include <armlp/livepatch.h>
ARMLP_PATCH("statics");
extern int helper(int x) ARMLP_SYMBOL(helper, 1);
extern int scale;
int use_helper_v2(int x) { return 100 * helper(x) + scale; }
ARMLP_REPLACE(use_helper, use_helper_v2);
