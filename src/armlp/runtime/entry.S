/*
 * armlp in-target runtime: the trampolines an mcount site can call.
 *
 * At a site, the function has run its prologue and "push {lr}"; the site's
 * "bl" put the resume address (site + 4) in lr.  So on entry here:
 *   lr   = site + 4            [sp] = the function's entry lr (parent ip)
 *   sp   = site sp - 4         r0-r3 = the function's arguments
 * ip is free (the mcount ABI lets __gnu_mcount_nc clobber it).  A Thumb
 * site calls these with "blx": lr has bit 0 set, which every return here
 * keeps ("bx" goes back to Thumb) and the site's address drops.  Nothing
 * here touches the VFP registers or FPSCR (the hard-float arguments).
 */
	.syntax unified
	.arm
	.text

/*
 * ftrace_caller: the plain tracer path.  Saves what the AAPCS lets a C call
 * clobber, calls armlp_ftrace_function(ip, parent_ip, op, fregs) and returns
 * into the function with lr restored and the "push {lr}" popped.
 */
	.globl	ftrace_caller
	.type	ftrace_caller, %function
ftrace_caller:
	push	{r0-r3, lr}
	bic	r0, lr, #1
	sub	r0, r0, #4			@ ip: the site
	ldr	r1, [sp, #20]			@ parent ip: the entry lr
	ldr	r2, .Lops
	ldr	r2, [r2]
	mov	r3, sp				@ fregs: {r0-r3, lr}
	ldr	ip, .Lfunc
	ldr	ip, [ip]
	blx	ip
	pop	{r0-r3, ip, lr}			@ ip = site + 4, lr = entry lr
	bx	ip
.Lops:	.word	armlp_ftrace_op
.Lfunc:	.word	armlp_ftrace_function
	.size	ftrace_caller, . - ftrace_caller

/*
 * ftrace_regs_caller: the seed's "ftrace with regs".  Builds a struct
 * pt_regs describing the function at its site (sp = site sp, lr = entry lr,
 * pc = resume address), lets the ops look and change it, then either
 * resumes the function or, when a handler moved pc, enters the new pc with
 * the entry context armlp_ftrace_regs_dispatch undid into regs.
 */
#define S_FRAME	72
#define S_SP	52
#define S_LR	56
#define S_PC	60
#define S_PSR	64
	.globl	ftrace_regs_caller
	.type	ftrace_regs_caller, %function
ftrace_regs_caller:
	sub	sp, sp, #S_FRAME
	stmia	sp, {r0-r12}
	add	r0, sp, #(S_FRAME + 4)		@ site sp
	ldr	r1, [sp, #S_FRAME]		@ entry lr
	str	r0, [sp, #S_SP]
	str	r1, [sp, #S_LR]
	str	lr, [sp, #S_PC]
	mov	r2, #0				@ no cpsr: a stale copy of this
	str	r2, [sp, #S_PSR]		@ frame is then no signal frame
	bic	r0, lr, #1
	sub	r0, r0, #4			@ ip: the site
	mov	r2, sp				@ regs
	bl	armlp_ftrace_regs_dispatch
	cmp	r0, #0
	bne	1f
	ldmia	sp, {r0-r12}			@ resume the function
	ldr	lr, [sp, #S_LR]
	ldr	ip, [sp, #S_PC]
	add	sp, sp, #(S_FRAME + 4)
	bx	ip
1:	ldmia	sp, {r0-r11}			@ enter the new function
	ldr	lr, [sp, #S_LR]
	ldr	ip, [sp, #S_PC]
	ldr	sp, [sp, #S_SP]
	bx	ip
	.size	ftrace_regs_caller, . - ftrace_regs_caller

	.section .note.GNU-stack,"",%progbits
