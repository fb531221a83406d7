/* A pre_patch that refuses, in a live program. */
#include <armlp/livepatch.h>
ARMLP_PATCH("live-refuse");
int price_refused(int items) { return -items; }
ARMLP_REPLACE(price, price_refused);
static int pre_patch(struct klp_object *obj) { return -1; }
ARMLP_CALLBACKS(pre_patch, 0, 0, 0);
