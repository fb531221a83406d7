/* The kernel selftests' test_klp_state for a program (tests/test_selftests.py):
 * a cumulative patch whose callbacks save the program's console_loglevel in
 * the space of its system state, raise it, and put it back. */
#define MODNAME test_klp_state
#define CONSOLE_LOGLEVEL_STATE_VERSION 1
#include "test_klp_state.h"

static int allocate_loglevel_state(void)
{
	struct klp_state *loglevel_state = klp_get_state(patch, CONSOLE_LOGLEVEL_STATE);

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
	struct klp_state *loglevel_state = klp_get_state(patch, CONSOLE_LOGLEVEL_STATE);

	if (!loglevel_state)
		return;
	pr_info(__func__, "fixing console_loglevel");
	*(int *)loglevel_state->data = console_loglevel;
	console_loglevel = CONSOLE_LOGLEVEL_MOTORMOUTH;
}

static void restore_console_loglevel(void)
{
	struct klp_state *loglevel_state = klp_get_state(patch, CONSOLE_LOGLEVEL_STATE);

	if (!loglevel_state)
		return;
	pr_info(__func__, "restoring console_loglevel");
	console_loglevel = *(int *)loglevel_state->data;
}

static void free_loglevel_state(void)
{
	struct klp_state *loglevel_state = klp_get_state(patch, CONSOLE_LOGLEVEL_STATE);

	if (!loglevel_state)
		return;
	pr_info(__func__, "freeing space for the stored console_loglevel");
	kfree_loglevel();
}
