/* SPDX-License-Identifier: GPL-2.0 */
/* What core.c, patch.c and transition.c share; not for patch modules. */
#ifndef _ARMLP_KLP_CORE_H
#define _ARMLP_KLP_CORE_H

#include <linux/mutex.h>
#include "klp.h"

#define KLP_UNPATCHED	0
#define KLP_PATCHED	1

#define klp_for_each_object(patch, obj) \
	for (obj = (patch)->objs; obj->funcs; obj++)
#define klp_for_each_func(obj, func) \
	for (func = (obj)->funcs; func->old_name; func++)

#define klp_for_each_state(patch, state) \
	for (state = (patch)->states; state && state->id; state++)

/* The enabled patches (and the one in transition), oldest first. */
extern struct list_head klp_patches;

/* Serializes every change of patch state: sysfs stores, module init, the work. */
extern struct mutex klp_mutex;
/* Runs the transition retries and the frees; drained before the core goes. */
extern struct workqueue_struct *klp_wq;

/* patch.c: func stacks and the ftrace handler */
struct klp_ops {
	struct list_head node;
	struct list_head func_stack;	/* top first */
	struct ftrace_ops fops;
	unsigned long site;
};
int klp_hook_object(struct klp_object *obj);
void klp_unhook_object(struct klp_object *obj);
void klp_push_func(struct klp_func *func);
void klp_pop_func(struct klp_func *func);
struct klp_func *klp_top_func(struct klp_func *func);

/* transition.c: the switch under stop_machine */
extern struct klp_patch *klp_transition_patch;
void klp_start_transition(struct klp_patch *patch, int target);
void klp_try_complete_transition(void);
void klp_reverse_transition(void);
void klp_force_transition(void);
const char *klp_switch_note(void);

/* core.c: the ends of a transition, with their callbacks */
void klp_complete_patch(struct klp_patch *patch);
void klp_complete_unpatch(struct klp_patch *patch);

#endif /* _ARMLP_KLP_CORE_H */
