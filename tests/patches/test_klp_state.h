/* What the ports of the kernel selftests' test_klp_state modules share
 * (tests/patches/test_klp_state.c, test_klp_state2.c): the callbacks, each
 * printing where it runs and calling its state function, and the way they
 * print.  The includer defines MODNAME and CONSOLE_LOGLEVEL_STATE_VERSION,
 * then the four state functions.  The program has no kernel heap: the space
 * a state keeps console_loglevel in is a shadow variable of it (the kernel's
 * kzalloc/kfree).  No function is replaced. */
#include <armlp/livepatch.h>

#define STR1(x) #x
#define STR(x) STR1(x)
#define CONSOLE_LOGLEVEL_STATE 1
#define CONSOLE_LOGLEVEL_MOTORMOUTH 15

ARMLP_PATCH(STR(MODNAME));
ARMLP_ATOMIC_REPLACE;
ARMLP_STATE(CONSOLE_LOGLEVEL_STATE, CONSOLE_LOGLEVEL_STATE_VERSION);

extern void fs_print(const char *s);
extern int console_loglevel;
static struct klp_patch *patch;	/* the kernel's module has &patch */

static void pr_info(const char *func, const char *what)
{
	fs_print(STR(MODNAME) ": ");
	fs_print(func);
	fs_print(": ");
	fs_print(what);
	fs_print("\n");
}

/* The kernel's kzalloc(sizeof(console_loglevel)) and kfree of it. */
static void *kzalloc_loglevel(void)
{
	return klp_shadow_alloc(&console_loglevel, CONSOLE_LOGLEVEL_STATE,
				sizeof(console_loglevel), GFP_KERNEL, 0, 0);
}

static void kfree_loglevel(void)
{
	klp_shadow_free(&console_loglevel, CONSOLE_LOGLEVEL_STATE, 0);
}

static int allocate_loglevel_state(void);
static void fix_console_loglevel(void);
static void restore_console_loglevel(void);
static void free_loglevel_state(void);

static void callback_info(const char *callback, struct klp_object *obj)
{
	patch = obj->patch;
	pr_info(callback, obj->name ? obj->name : "program");
}

static int pre_patch_callback(struct klp_object *obj)
{
	callback_info(__func__, obj);
	return allocate_loglevel_state();
}

static void post_patch_callback(struct klp_object *obj)
{
	callback_info(__func__, obj);
	fix_console_loglevel();
}

static void pre_unpatch_callback(struct klp_object *obj)
{
	callback_info(__func__, obj);
	restore_console_loglevel();
}

static void post_unpatch_callback(struct klp_object *obj)
{
	callback_info(__func__, obj);
	free_loglevel_state();
}

ARMLP_CALLBACKS(pre_patch_callback, post_patch_callback, pre_unpatch_callback,
		post_unpatch_callback);
