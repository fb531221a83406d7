/* The kernel selftests' test_klp_callbacks_demo2 for a program:
 * every callback prints where the kernel's demo does (the program is the
 * object; the kernel's would say vmlinux). */
#include <armlp/livepatch.h>
ARMLP_PATCH("test_klp_callbacks_demo2");
extern void fs_print(const char *s);
int leaf_demo2(int x) { return x + 2000; }
ARMLP_REPLACE(leaf, leaf_demo2);

static void say(const char *what, struct klp_object *obj)
{
	fs_print("test_klp_callbacks_demo2: ");
	fs_print(what);
	fs_print(obj->name ? obj->name : "program");
	fs_print("\n");
}
static int pre_patch(struct klp_object *obj) { say("pre_patch_callback: ", obj); return 0; }
static void post_patch(struct klp_object *obj) { say("post_patch_callback: ", obj); }
static void pre_unpatch(struct klp_object *obj) { say("pre_unpatch_callback: ", obj); }
static void post_unpatch(struct klp_object *obj) { say("post_unpatch_callback: ", obj); }
ARMLP_CALLBACKS(pre_patch, post_patch, pre_unpatch, post_unpatch);
