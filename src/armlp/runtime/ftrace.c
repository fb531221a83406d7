/*
 * armlp in-target runtime: ftrace ops dispatch and the function tracer.
 *
 * Built without -pg (this code must never trace itself).  Python only
 * writes the data these functions read; nothing here calls back.
 */
#include "armlp_rt.h"

struct armlp_site_table *armlp_sites;	/* published by the control plane */
struct armlp_trace_ring armlp_trace_ring;

/* The plain trampoline calls this pointer with armlp_ftrace_op: a single
 * registered ops is called directly, several go through the list func (the
 * kernel's ftrace_trace_function optimisation). */
void armlp_ftrace_stub(u32 ip, u32 parent_ip, struct ftrace_ops *op, void *fregs);
ftrace_func_t armlp_ftrace_function = armlp_ftrace_stub;
struct ftrace_ops *armlp_ftrace_op;

void armlp_ftrace_stub(u32 ip, u32 parent_ip, struct ftrace_ops *op, void *fregs)
{
	(void)ip; (void)parent_ip; (void)op; (void)fregs;
}

/*
 * Every user of the site.  The control plane edits a site's users while
 * threads run through here: a user keeps its slot while registered, a slot
 * is filled before nops covers it and cleared after nops stopped covering
 * it, so a slot read under a stale nops is a user or NULL (skipped).
 */
void armlp_ftrace_list_func(u32 ip, u32 parent_ip, struct ftrace_ops *op, void *fregs)
{
	struct armlp_site *s = armlp_site_lookup(READ_ONCE(armlp_sites), ip);
	u32 i, n;
	(void)op;
	if (!s)
		return;
	n = READ_ONCE(s->nops);
	for (i = 0; i < n; i++) {
		struct ftrace_ops *o = READ_ONCE(s->ops[i]);
		if (o)
			o->func(ip, parent_ip, o, fregs);
	}
}

/*
 * Called by ftrace_regs_caller with a full struct pt_regs whose pc is the
 * resume address (site + 4, bit 0 set for a Thumb site).  If a handler moved pc, undo the prologue in
 * regs so the trampoline enters the new pc with the caller's exact context
 * (r0-r11, sp, lr), and return 1.
 */
int armlp_ftrace_regs_dispatch(u32 ip, u32 parent_ip, struct pt_regs *regs)
{
	struct armlp_site *s = armlp_site_lookup(READ_ONCE(armlp_sites), ip);
	u32 resume = regs->ARM_pc;
	u32 i, n;
	if (!s)
		return 0;
	n = READ_ONCE(s->nops);
	for (i = 0; i < n; i++) {	/* NULL slots: see armlp_ftrace_list_func */
		struct ftrace_ops *o = READ_ONCE(s->regs_ops[i]);
		if (o)
			o->func(ip, parent_ip, o, regs);
	}
	if (regs->ARM_pc == resume)
		return 0;
	if (s->rule == RULE_APCS) {
		/* The seed's undo: fp points at the saved pc of the APCS frame. */
		const u32 *fp = (const u32 *)regs->ARM_fp;
		regs->ARM_lr = fp[-1];
		regs->ARM_sp = fp[-2];
		regs->ARM_fp = fp[-3];
	} else if (s->rule == RULE_PUSH) {
		u32 sp = regs->ARM_sp;
		u32 fp = (s->flags & SITE_FL_THUMB) ? 7 : 11;
		if (s->fp_slot >= 0)
			regs->uregs[fp] = *(const u32 *)(sp + (u32)s->fp_slot);
		regs->ARM_sp = sp + s->frame_size;
	} else {
		/* Not undoable: never redirect (the control plane refuses these). */
		regs->ARM_pc = resume;
		return 0;
	}
	return 1;
}

/* One record into the tracer's ring (head counts records ever written;
 * concurrent writers may overwrite each other's slot: best effort). */
static inline void armlp_trace_record(u32 ip, u32 parent_ip, u32 site_sp)
{
	struct armlp_trace_ring *r = &armlp_trace_ring;
	u32 h = r->head;
	u32 *e = r->buf + (h & r->mask) * 3;
	e[0] = ip;
	e[1] = parent_ip;
	e[2] = site_sp;
	r->head = h + 1;
}

/* The function tracer, under ftrace_caller: the site sp is fregs + 24. */
void armlp_trace_func(u32 ip, u32 parent_ip, struct ftrace_ops *op, void *fregs)
{
	(void)op;
	armlp_trace_record(ip, parent_ip, (u32)fregs + 24);
}

/* The same, where it shares a regs trampoline with other users. */
void armlp_trace_func_regs(u32 ip, u32 parent_ip, struct ftrace_ops *op, void *fregs)
{
	(void)op;
	armlp_trace_record(ip, parent_ip, ((struct pt_regs *)fregs)->ARM_sp);
}

/* Send every call of the ops' sites to op->private (armlp verify's probe). */
void armlp_redirect_func(u32 ip, u32 parent_ip, struct ftrace_ops *op, void *fregs)
{
	(void)ip; (void)parent_ip;
	((struct pt_regs *)fregs)->ARM_pc = (u32)op->private;
}
