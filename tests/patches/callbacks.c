/* Callbacks for programs: each leaves a trace in the program's rec_sink,
 * with what leaf(1) returns at that moment (2: original, 101: replaced). */
#include <armlp/livepatch.h>
ARMLP_PATCH("callbacks");
extern volatile int rec_sink;
extern int leaf(int x);
int leaf_cb(int x) { return x + 100; }
ARMLP_REPLACE(leaf, leaf_cb);

static int pre_patch(struct klp_object *obj) { rec_sink = leaf(1) + (obj->name ? 5 : 0); return 0; }
static void post_patch(struct klp_object *obj) { rec_sink = rec_sink * 1000 + leaf(1); }
static void pre_unpatch(struct klp_object *obj) { rec_sink = rec_sink * 10 + 3; }
static void post_unpatch(struct klp_object *obj) { rec_sink = rec_sink * 1000 + leaf(1); }
ARMLP_CALLBACKS(pre_patch, post_patch, pre_unpatch, post_unpatch);
