/* The kernel selftests' test_klp_state2 for a program (tests/test_selftests.py):
 * version 2 of test_klp_state's system state, which takes over the state a
 * patch enabled before it made (klp_get_prev_state) instead of making it
 * again, and hands it back.  -DMODNAME=test_klp_state3 builds the kernel's
 * test_klp_state3 (the same source under another name). */
#ifndef MODNAME
#define MODNAME test_klp_state2
#endif
/* Version 2 supports migration. */
#define CONSOLE_LOGLEVEL_STATE_VERSION 2
#include "test_klp_state.h"

static int allocate_loglevel_state(void)
{
	struct klp_state *loglevel_state;

	if (klp_get_prev_state(CONSOLE_LOGLEVEL_STATE)) {
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
	prev_loglevel_state = klp_get_prev_state(CONSOLE_LOGLEVEL_STATE);
	if (prev_loglevel_state) {
		pr_info(__func__, "taking over the console_loglevel change");
		loglevel_state->data = prev_loglevel_state->data;
		return;
	}
	pr_info(__func__, "fixing console_loglevel");
	*(int *)loglevel_state->data = console_loglevel;
	console_loglevel = CONSOLE_LOGLEVEL_MOTORMOUTH;
}

static void restore_console_loglevel(void)
{
	struct klp_state *loglevel_state;

	if (klp_get_prev_state(CONSOLE_LOGLEVEL_STATE)) {
		pr_info(__func__, "passing the console_loglevel change back to the old livepatch");
		return;
	}
	loglevel_state = klp_get_state(patch, CONSOLE_LOGLEVEL_STATE);
	if (!loglevel_state)
		return;
	pr_info(__func__, "restoring console_loglevel");
	console_loglevel = *(int *)loglevel_state->data;
}

static void free_loglevel_state(void)
{
	struct klp_state *loglevel_state;

	if (klp_get_prev_state(CONSOLE_LOGLEVEL_STATE)) {
		pr_info(__func__, "keeping space to store console_loglevel");
		return;
	}
	loglevel_state = klp_get_state(patch, CONSOLE_LOGLEVEL_STATE);
	if (!loglevel_state)
		return;
	pr_info(__func__, "freeing space for the stored console_loglevel");
	kfree_loglevel();
}
