/*
 * armlp in-target runtime: shared definitions.
 *
 * The layouts below are mirrored by armlp/runtime/layout.py; the control
 * plane (Python) writes these structures into the target, the data plane
 * (this code) reads them on every traced or patched call.
 */
#ifndef ARMLP_RT_H
#define ARMLP_RT_H

typedef unsigned int u32;
typedef int s32;
typedef unsigned short u16;
typedef unsigned char u8;

/* The kernel's ARM struct pt_regs: r0-r10, fp, ip, sp, lr, pc, cpsr, orig_r0.
 * ftrace_regs_caller leaves cpsr 0: left on a stack, its pc and cpsr would
 * otherwise look like a signal frame's (livepatch/transition.py). */
struct pt_regs {
	u32 uregs[18];
};
/* One load the compiler may neither repeat nor tear: for data the control
 * plane changes while threads read it (as the kernel's READ_ONCE). */
#define READ_ONCE(x) (*(const volatile __typeof__(x) *)&(x))

#define ARM_fp uregs[11]
#define ARM_ip uregs[12]
#define ARM_sp uregs[13]
#define ARM_lr uregs[14]
#define ARM_pc uregs[15]

struct ftrace_ops;
/*
 * An ops callback: ip is the mcount site, parent_ip the caller's return
 * address.  fregs is the plain trampoline's save area {r0-r3, lr} (the site
 * sp is fregs + 24) or, for FTRACE_OPS_FL_SAVE_REGS users, a struct pt_regs.
 */
typedef void (*ftrace_func_t)(u32 ip, u32 parent_ip, struct ftrace_ops *op, void *fregs);

#define FTRACE_OPS_FL_SAVE_REGS 0x1

struct ftrace_ops {
	ftrace_func_t func;
	u32 flags;
	void *private;
};

/* How the regs trampoline undoes a prologue (analysis/prologue.py). */
#define RULE_NONE 0
#define RULE_APCS 1
#define RULE_PUSH 2

#define SITE_MAX_OPS 4

/* struct armlp_site.flags: the site is Thumb code, whose frame pointer is
 * r7 (ARM's is fp, r11). */
#define SITE_FL_THUMB 0x1

/* One replacement on a patched function's func stack (livepatch.c). */
struct klp_func_node {
	u32 new_func;
	struct klp_func_node *next;   /* the node below: an older patch */
	u32 patch_id;
	u32 transition;               /* its patch is switching threads over */
};

/* A thread's view during a transition (transition.c). */
#define KLP_UNPATCHED 0
#define KLP_PATCHED 1
#define KLP_MAX_THREADS 256

/*
 * One stack of the program: the threads whose sp lies in [lo, hi) share a
 * patch state (a thread is found by its stack, never by a system call).
 */
struct klp_thread {
	u32 lo;
	u32 hi;
	s32 patch_state;
};

/* The transition in progress: a stack not listed has the target state. */
struct klp_transition {
	s32 target_state;
	u32 nr;
	struct klp_thread threads[KLP_MAX_THREADS];
};

/* What a patched function's ftrace_ops.private points at. */
struct klp_ops {
	struct klp_func_node *stack;  /* top of the func stack, NULL when empty */
};

/* One mcount site (the kernel's struct dyn_ftrace plus its undo recipe). */
struct armlp_site {
	u32 ip;              /* address of the mcount bl */
	u32 func;            /* function entry */
	u8 rule;             /* RULE_* */
	u8 nops;             /* users of this site */
	u16 flags;           /* SITE_FL_* */
	u32 frame_size;      /* RULE_PUSH: entry sp - site sp */
	s32 fp_slot;         /* RULE_PUSH: the frame pointer's (fp, or r7 in Thumb code)
	                      * save slot from site sp, -1 if untouched */
	/* The same users twice: as the plain trampoline calls them and as the
	 * regs trampoline does, so a site can switch trampolines at any instant. */
	struct ftrace_ops *ops[SITE_MAX_OPS];
	struct ftrace_ops *regs_ops[SITE_MAX_OPS];
};

/* Open-addressed hash of sites by ip; never changed once published: the
 * control plane builds a new one (a library's sites come or go) and swaps
 * the one pointer armlp_sites, so a lookup sees one table whole. */
struct armlp_site_table {
	u32 bits;
	struct armlp_site **slots;
};

/* The function tracer's ring buffer: head counts records ever written. */
struct armlp_trace_ring {
	u32 head;
	u32 mask;            /* entries - 1, entries a power of two */
	u32 *buf;            /* 3 words per record: ip, parent_ip, site sp */
};

#define SITE_HASH_MUL 0x9E3779B1u

static inline struct armlp_site *armlp_site_lookup(const struct armlp_site_table *t, u32 ip)
{
	u32 mask;
	if (!t)
		return 0;
	mask = (1u << t->bits) - 1;
	u32 i = ((ip >> 2) * SITE_HASH_MUL) >> (32 - t->bits);
	for (;;) {
		struct armlp_site *s = t->slots[i];
		if (!s || s->ip == ip)
			return s;
		i = (i + 1) & mask;
	}
}

#endif
