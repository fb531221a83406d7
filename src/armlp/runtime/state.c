/*
 * armlp in-target runtime: system states, the API of the kernel's
 * kernel/livepatch/state.c, for the callbacks of patches.
 *
 * The control plane gives every enabled patch a struct klp_patch with its
 * ARMLP_STATE records as struct klp_state (data NULL), links them in the
 * order they were enabled, and before each callback points
 * armlp_klp_patches at the first and armlp_klp_transition_patch at the
 * patch in transition.  Callbacks run on armlp's own thread while the
 * program's threads are stopped, so nothing here takes a lock.
 */
#include "armlp_rt.h"
#include <armlp/livepatch.h>

struct klp_patch *armlp_klp_patches;
struct klp_patch *armlp_klp_transition_patch;

struct klp_state *klp_get_state(struct klp_patch *patch, unsigned long id)
{
	struct klp_state *state;

	for (state = patch->states; state->id; state++)
		if (state->id == id)
			return state;
	return 0;
}

struct klp_state *klp_get_prev_state(unsigned long id)
{
	struct klp_patch *patch;
	struct klp_state *state, *last_state = 0;

	if (!armlp_klp_transition_patch)	/* only a callback may ask */
		return 0;
	for (patch = armlp_klp_patches; patch && patch != armlp_klp_transition_patch;
	     patch = patch->next) {
		state = klp_get_state(patch, id);
		if (state)
			last_state = state;
	}
	return last_state;
}
