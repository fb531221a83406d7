/*
 * armlp in-target runtime: the dynamic linker's debugger hook, redirected.
 *
 * glibc's ld.so calls _dl_debug_state() (r_debug.r_brk) before and after
 * every change to its list of objects.  armlp makes that function's one
 * instruction ("bx lr") a branch here (armlp.control.libraries): the calling
 * thread marks the event, sends armlp's stop signal to armlp's agent
 * thread (signal 0, no one, where the agent is parked behind the stub's
 * door: the control plane looks at the mark), and sleeps until the control
 * plane has brought the patch objects in line with ld.so's list and
 * cleared the mark; then it returns to ld.so as _dl_debug_state would.  Only the agent ever stops in the GDB stub
 * (qemu-user's stub is not safe with two threads in it); this thread only
 * sleeps, so a library that comes is patched before any of its code runs.
 *
 * The control plane fills in the agent's ids before the branch is written.
 */
	.syntax unified
	.arm

	.data
	.balign	4
	.globl	armlp_linker_pending
armlp_linker_pending:	.word	0	@ 1: an event not handled yet
	.globl	armlp_agent_tgid
armlp_agent_tgid:	.word	0
	.globl	armlp_agent_tid
armlp_agent_tid:	.word	0
	.globl	armlp_agent_signal
armlp_agent_signal:	.word	0
.Lnap:	.word	0, 1000000		@ struct timespec: 1 ms

	.text
	.globl	armlp_linker_hook
	.type	armlp_linker_hook, %function
armlp_linker_hook:
	push	{r0-r5, r7, lr}		@ ld.so's registers as it left them
	ldr	r4, .Lpending
	mov	r0, #1			@ an event (threads that come together share it)
	str	r0, [r4]
	ldr	r5, .Lagent
	ldr	r0, [r5]		@ tgkill(tgid, tid, signal)
	ldr	r1, [r5, #4]
	ldr	r2, [r5, #8]
	mov	r7, #268
	svc	#0
	@ Ordering: the mark is read after the signal went; the control
	@ plane clears it only once every object is in line.  The wait is
	@ bounded (5,000 naps): if armlp is gone, ld.so goes on all the same.
	ldr	r5, .Lnaps
2:	ldr	r0, [r4]
	cmp	r0, #0
	beq	3f
	subs	r5, r5, #1
	beq	3f
	ldr	r0, .Lts		@ nanosleep(&1 ms, NULL)
	mov	r1, #0
	mov	r7, #162
	svc	#0
	b	2b
3:	pop	{r0-r5, r7, lr}
	bx	lr
.Lpending:	.word	armlp_linker_pending
.Lagent:	.word	armlp_agent_tgid
.Lts:		.word	.Lnap
.Lnaps:		.word	5000
	.size	armlp_linker_hook, . - armlp_linker_hook
