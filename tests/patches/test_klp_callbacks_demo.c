/* The kernel selftests' test_klp_callbacks_demo for a program
 * (tests/test_selftests.py): every callback prints where the kernel's demo
 * does (the program is the object; the kernel's would say vmlinux).  Its
 * module parameters are compile-time here: -DDEMO=NAME names the patch
 * (test_klp_callbacks_demo2 is the same source), -DPRE_PATCH_RET=-19 makes
 * pre_patch refuse. */
#include <armlp/livepatch.h>
#ifndef DEMO
#define DEMO test_klp_callbacks_demo
#endif
#ifndef PRE_PATCH_RET
#define PRE_PATCH_RET 0
#endif
#define STR1(x) #x
#define STR(x) STR1(x)

ARMLP_PATCH(STR(DEMO));
extern void fs_print(const char *s);
int leaf_demo(int x) { return x + 2000; }
ARMLP_REPLACE(leaf, leaf_demo);

static void say(const char *what, struct klp_object *obj)
{
	fs_print(STR(DEMO) ": ");
	fs_print(what);
	fs_print(obj->name ? obj->name : "program");
	fs_print("\n");
}
static int pre_patch(struct klp_object *obj) { say("pre_patch_callback: ", obj); return PRE_PATCH_RET; }
static void post_patch(struct klp_object *obj) { say("post_patch_callback: ", obj); }
static void pre_unpatch(struct klp_object *obj) { say("pre_unpatch_callback: ", obj); }
static void post_unpatch(struct klp_object *obj) { say("post_unpatch_callback: ", obj); }
ARMLP_CALLBACKS(pre_patch, post_patch, pre_unpatch, post_unpatch);
