/* armlp freestanding runtime: process entry, mcount stub, raw syscall.
 *
 * Built without -pg: nothing here has an mcount site.
 * Linux ARM EABI: svc #0 with the syscall number in r7, arguments in r0-r5,
 * result in r0 (-errno on failure).
 */
	.syntax unified
	.arm
	.text

/* _start: the kernel (or armlp's emulator) leaves sp -> argc, argv[], NULL,
 * envp[], NULL, auxv.  Call main(argc, argv, envp), then exit_group(ret). */
	.globl	_start
	.type	_start, %function
_start:
	mov	fp, #0
	mov	lr, #0
	ldr	r0, [sp]		@ argc
	add	r1, sp, #4		@ argv
	add	r2, r1, r0, lsl #2
	add	r2, r2, #4		@ envp = argv + argc + 1
	ldr	r3, =fs_environ
	str	r2, [r3]
	bic	sp, sp, #7		@ AAPCS: 8-byte aligned stack at calls
	bl	main
	mov	r7, #248		@ exit_group
	svc	#0
1:	b	1b
	.size	_start, . - _start

/* The mcount ABI of GCC's -pg on ARM: the site is
 *	push	{lr}
 *	bl	__gnu_mcount_nc
 * so on entry lr = return address past the site and [sp] = the function's
 * own lr.  Return past the site with lr restored and the push balanced.
 * Weak, so a program may bring its own. */
	.weak	__gnu_mcount_nc
	.type	__gnu_mcount_nc, %function
__gnu_mcount_nc:
	mov	ip, lr
	pop	{lr}
	bx	ip
	.size	__gnu_mcount_nc, . - __gnu_mcount_nc

/* long fs_syscall(long nr, long a0, long a1, long a2, long a3, long a4, long a5) */
	.globl	fs_syscall
	.type	fs_syscall, %function
fs_syscall:
	mov	ip, sp
	push	{r4, r5, r7, lr}
	mov	r7, r0
	mov	r0, r1
	mov	r1, r2
	mov	r2, r3
	ldm	ip, {r3, r4, r5}
	svc	#0
	pop	{r4, r5, r7, lr}
	bx	lr
	.size	fs_syscall, . - fs_syscall

	.section .note.GNU-stack,"",%progbits
