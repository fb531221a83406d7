// SPDX-License-Identifier: GPL-2.0
/*
 * lib/livepatch/test_klp_state*.c for armlp: system state 1 (a saved value,
 * as upstream's console loglevel), version 2, in a cumulative patch whose
 * callbacks make it or take it over from the patch before.
 */
#include <linux/slab.h>
#include <armlp/livepatch.h>

ARMLP_PATCH("state_v2");
ARMLP_ATOMIC_REPLACE;
ARMLP_STATE(1, 2);

static int pre_patch(struct klp_object *obj)
{
	struct klp_state *state = klp_get_state(obj->patch, 1);
	struct klp_state *prev = klp_get_prev_state(1);

	if (prev) {
		state->data = prev->data;
		pr_info("state_v2: state 1: taking over from version %u\n", prev->version);
		return 0;
	}
	state->data = kzalloc(sizeof(int), GFP_KERNEL);
	if (!state->data)
		return -ENOMEM;
	pr_info("state_v2: state 1: allocated\n");
	return 0;
}

static void post_unpatch(struct klp_object *obj)
{
	struct klp_state *state = klp_get_state(obj->patch, 1);

	pr_info("state_v2: state 1: freed\n");
	kfree(state->data);
}

ARMLP_CALLBACKS(pre_patch, NULL, NULL, post_unpatch);
