/* Callbacks in a live program: pre_patch and post_patch set what the new
 * price() adds (7, then +20: 27 only if they ran, in that order). */
#include <armlp/livepatch.h>
ARMLP_PATCH("live-callbacks");
static volatile int bonus;
int price_cb(int items) { return items * 100 + bonus; }
ARMLP_REPLACE(price, price_cb);
static int pre_patch(struct klp_object *obj) { bonus = obj->name ? -1 : 7; return 0; }
static void post_patch(struct klp_object *obj) { bonus += 20; }
ARMLP_CALLBACKS(pre_patch, post_patch, 0, 0);
