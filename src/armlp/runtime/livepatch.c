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

void klp_ftrace_handler(u32 ip, u32 parent_ip, struct ftrace_ops *op, void *fregs)
{
	struct pt_regs *regs = fregs;
	struct klp_func_node *top = ((struct klp_ops *)op->private)->stack;
	(void)ip; (void)parent_ip;
	if (top)
		regs->ARM_pc = top->new_func;
}
