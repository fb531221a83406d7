/*
 * armlp in-target runtime: the livepatch ftrace handler.
 *
 * Each patched function has one struct klp_ops (registered as a
 * FTRACE_OPS_FL_SAVE_REGS user of its site) holding the function's func
 * stack: every enabled patch that replaces the function pushes a node,
 * newest on top.  The handler sends the call to the top node's new function
 * by setting the saved pc; ftrace_regs_caller then undoes the prologue and
 * enters it.  The control plane edits the stacks; this only reads them.
 */
#include "armlp_rt.h"

int klp_patch_state(u32 sp);

void klp_ftrace_handler(u32 ip, u32 parent_ip, struct ftrace_ops *op, void *fregs)
{
	struct pt_regs *regs = fregs;
	struct klp_func_node *func = READ_ONCE(((struct klp_ops *)op->private)->stack);
	(void)ip; (void)parent_ip;
	if (!func)
		return;
	/*
	 * During a transition a thread still unpatched keeps the function it
	 * had: the node below (an older patch), or the original when there is
	 * none.  The control plane sets klp_transition before any node's flag
	 * and clears the flags before the table.
	 */
	if (READ_ONCE(func->transition) && klp_patch_state(regs->ARM_sp) == KLP_UNPATCHED) {
		func = READ_ONCE(func->next);
		if (!func)
			return;
	}
	/* An atomic replace's nop func: the original function runs. */
	if (!func->new_func)
		return;
	regs->ARM_pc = func->new_func;
}
