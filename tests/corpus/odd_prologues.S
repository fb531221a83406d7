/* Prologues scan must refuse, each for a reason a user can act on. */
	.syntax unified
	.arm
	.text

	.globl	far_site		@ 17 instructions before the hook: too far
	.type	far_site, %function
far_site:
	.rept	17
	nop
	.endr
	push	{lr}
	bl	__gnu_mcount_nc
	bx	lr
	.size	far_site, . - far_site

	.globl	odd_insn		@ an instruction the analysis does not model
	.type	odd_insn, %function
odd_insn:
	mov	r4, r0
	push	{lr}
	bl	__gnu_mcount_nc
	bx	lr
	.size	odd_insn, . - odd_insn

	.globl	no_push			@ the call is not the -pg sequence
	.type	no_push, %function
no_push:
	mov	ip, sp
	bl	__gnu_mcount_nc
	bx	lr
	.size	no_push, . - no_push

	.globl	unsaved_fp		@ fp changed, never saved: cannot be undone
	.type	unsaved_fp, %function
unsaved_fp:
	add	fp, sp, #0
	push	{lr}
	bl	__gnu_mcount_nc
	bx	lr
	.size	unsaved_fp, . - unsaved_fp

	.globl	spin_label		@ a label typed as a function, no size (the
	.type	spin_label, %function	@ kernel's __error_p): the site after it
spin_label:				@ is the next function's, not its own
	nop
	b	spin_label
	.globl	after_label
	.type	after_label, %function
after_label:
	push	{r4, lr}
	push	{lr}
	bl	__gnu_mcount_nc
	pop	{r4, pc}
	.size	after_label, . - after_label

	.globl	main
	.type	main, %function
main:
	mov	r0, #0
	bx	lr
	.size	main, . - main

	.section .note.GNU-stack,"",%progbits
