/*
 * armlp in-target runtime: the calling thread's patch state.
 *
 * During a transition each stack of the program is patched or unpatched
 * (kernel/livepatch/transition.c keeps this in task_struct; a program has
 * no such place, so the thread is found by the stack it runs on).  The
 * control plane fills the table with every thread stopped and flips a
 * stack's state with one aligned word write when none of the functions
 * being switched is on it.
 */
#include "armlp_rt.h"

/* NULL outside a transition; set before any node is marked transition. */
struct klp_transition *klp_transition;

int klp_patch_state(u32 sp)
{
	const struct klp_transition *t = READ_ONCE(klp_transition);
	u32 i;
	if (!t)
		return KLP_PATCHED;
	for (i = 0; i < t->nr; i++) {
		const struct klp_thread *th = &t->threads[i];
		if (sp >= th->lo && sp < th->hi)
			return READ_ONCE(th->patch_state);
	}
	/* A stack born during the transition has no old frames on it. */
	return t->target_state;
}
