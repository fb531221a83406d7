/* A pre_patch that refuses: the patch is not applied, nothing changes. */
#include <armlp/livepatch.h>
ARMLP_PATCH("callbacks-refuse");
int leaf_refused(int x) { return -x; }
ARMLP_REPLACE(leaf, leaf_refused);
static int pre_patch(struct klp_object *obj) { return -19; }
ARMLP_CALLBACKS(pre_patch, 0, 0, 0);
