/* The kernel selftests' test_klp_state modules for a program, one source
 * (tests/patches/test_klp_state.c and test_klp_state2.c define MODNAME and
 * CONSOLE_LOGLEVEL_STATE_VERSION, then include this): the callbacks save the
 * program's console_loglevel in the space of their system state, raise it,
 * and put it back.  Version 2 supports migration: it takes over the state a
 * patch enabled before it made (klp_get_prev_state) and hands it back;
 * version 1 never looks (the kernel's test_klp_state does not ask), which
 * makes version 2's code version 1's.  The program has no kernel heap: the
 * space is a shadow variable of console_loglevel (the kernel's kzalloc and
 * kfree).  No function is replaced. */
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

static struct klp_state *prev_state(void)
{
#if CONSOLE_LOGLEVEL_STATE_VERSION >= 2
	return klp_get_prev_state(CONSOLE_LOGLEVEL_STATE);
#else
	return 0;
#endif
}

static int allocate_loglevel_state(void)
{
	struct klp_state *loglevel_state;

	if (prev_state()) {
		pr_info(__func__, "space to store console_loglevel already allocated");
		return 0;
	}
	loglevel_state = klp_get_state(patch, CONSOLE_LOGLEVEL_STATE);
	if (!loglevel_state)
		return -22;
	loglevel_state->data = kzalloc_loglevel();
	if (!loglevel_state->data)
		return -12;
	pr_info(__func__, "allocating space to store console_loglevel");
	return 0;
}

static void fix_console_loglevel(void)
{
	struct klp_state *loglevel_state, *prev_loglevel_state;

	loglevel_state = klp_get_state(patch, CONSOLE_LOGLEVEL_STATE);
	if (!loglevel_state)
		return;
	prev_loglevel_state = prev_state();
	if (prev_loglevel_state) {
		pr_info(__func__, "taking over the console_loglevel change");
		loglevel_state->data = prev_loglevel_state->data;
		return;
	}
	pr_info(__func__, "fixing console_loglevel");
	*(int *)loglevel_state->data = console_loglevel;
	console_loglevel = CONSOLE_LOGLEVEL_MOTORMOUTH;
}

/* Undo the state's change (restore) or drop its space (free): left to the
 * patch before when there is one, as version 2 does. */
static struct klp_state *own_state(const char *func, const char *leave_to_prev)
{
	if (prev_state()) {
		pr_info(func, leave_to_prev);
		return 0;
	}
	return klp_get_state(patch, CONSOLE_LOGLEVEL_STATE);
}

static void restore_console_loglevel(void)
{
	struct klp_state *loglevel_state =
		own_state(__func__, "passing the console_loglevel change back to the old livepatch");

	if (!loglevel_state)
		return;
	pr_info(__func__, "restoring console_loglevel");
	console_loglevel = *(int *)loglevel_state->data;
}

static void free_loglevel_state(void)
{
	if (!own_state(__func__, "keeping space to store console_loglevel"))
		return;
	pr_info(__func__, "freeing space for the stored console_loglevel");
	kfree_loglevel();
}

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
