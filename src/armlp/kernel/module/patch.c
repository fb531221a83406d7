// SPDX-License-Identifier: GPL-2.0
/*
 * patch.c - func stacks and the ftrace handler
 *
 * One klp_ops per patched function, shared by every patch that replaces it:
 * its ftrace_ops is filtered on the function's mcount site, and its func
 * stack holds the replacements, newest first.  The handler sends the call to
 * the top of the stack through that func's trampoline.  Funcs are pushed and
 * popped only under stop_machine (transition.c), so a handler never sees a
 * stack halfway changed.
 */
#define pr_fmt(fmt) "armlp: " fmt

#include <linux/ftrace.h>
#include <linux/list.h>
#include <linux/rculist.h>
#include <linux/slab.h>
#include "core.h"

static LIST_HEAD(klp_ops);

static struct klp_ops *klp_find_ops(unsigned long site)
{
	struct klp_ops *ops;

	list_for_each_entry(ops, &klp_ops, node)
		if (ops->site == site)
			return ops;
	return NULL;
}

static void notrace klp_ftrace_handler(unsigned long ip, unsigned long parent_ip,
				       struct ftrace_ops *fops,
				       struct ftrace_regs *fregs)
{
	struct klp_ops *ops = container_of(fops, struct klp_ops, fops);
	struct pt_regs *regs = ftrace_get_regs(fregs);
	struct klp_func *func;

	/*
	 * With preemption off, stop_machine cannot run between reading the
	 * top of the stack and leaving the handler: a func popped by a switch
	 * is never entered after it.
	 */
	preempt_disable_notrace();
	func = list_first_or_null_rcu(&ops->func_stack, struct klp_func, stack_node);
	if (func && regs)
		regs->ARM_pc = (unsigned long)func->trampoline;
	preempt_enable_notrace();
}

static int klp_hook_func(struct klp_func *func)
{
	struct klp_ops *ops = klp_find_ops(func->site);
	int ret;

	if (ops) {
		func->ops = ops;
		return 0;
	}
	ops = kzalloc(sizeof(*ops), GFP_KERNEL);
	if (!ops)
		return -ENOMEM;
	ops->site = func->site;
	ops->fops.func = klp_ftrace_handler;
	ops->fops.flags = FTRACE_OPS_FL_SAVE_REGS | FTRACE_OPS_FL_DYNAMIC |
			  FTRACE_OPS_FL_IPMODIFY;
	INIT_LIST_HEAD(&ops->func_stack);

	ret = ftrace_set_filter_ip(&ops->fops, func->site, 0, 0);
	if (ret) {
		pr_err("%s: ftrace has no record of its mcount site %pS (%d)\n",
		       func->old_name, (void *)func->site, ret);
		goto free;
	}
	/* The stack is empty: until a switch pushes a func, calls go on as before. */
	ret = register_ftrace_function(&ops->fops);
	if (ret) {
		pr_err("%s: cannot register its ftrace_ops (%d)\n", func->old_name, ret);
		ftrace_set_filter_ip(&ops->fops, func->site, 1, 0);
		goto free;
	}
	list_add(&ops->node, &klp_ops);
	func->ops = ops;
	return 0;
free:
	kfree(ops);
	return ret;
}

static void klp_unhook_func(struct klp_func *func)
{
	struct klp_ops *ops = func->ops;

	if (!ops)
		return;
	func->ops = NULL;
	if (!list_empty(&ops->func_stack))
		return;		/* another patch still replaces this function */
	/* unregister_ftrace_function() waits until no CPU is in the handler. */
	WARN_ON(unregister_ftrace_function(&ops->fops));
	ftrace_set_filter_ip(&ops->fops, ops->site, 1, 0);
	list_del(&ops->node);
	kfree(ops);
}

int klp_hook_object(struct klp_object *obj)
{
	struct klp_func *func;
	int ret;

	klp_for_each_func(obj, func) {
		ret = klp_hook_func(func);
		if (ret) {
			klp_unhook_object(obj);
			return ret;
		}
	}
	obj->patched = true;
	return 0;
}

void klp_unhook_object(struct klp_object *obj)
{
	struct klp_func *func;

	klp_for_each_func(obj, func)
		klp_unhook_func(func);
	obj->patched = false;
}

/* Under stop_machine only. */
void klp_push_func(struct klp_func *func)
{
	list_add_rcu(&func->stack_node, &func->ops->func_stack);
}

/* Under stop_machine only. */
void klp_pop_func(struct klp_func *func)
{
	list_del_rcu(&func->stack_node);
}

/* The replacement @func's site runs now, or NULL for the original code. */
struct klp_func *klp_top_func(struct klp_func *func)
{
	return list_first_entry_or_null(&func->ops->func_stack, struct klp_func,
					stack_node);
}
