@ armlp's scratch page in a process behind a GDB stub (armlp.machine.scratch).
@
@ Position independent: armlp maps it at any page-aligned address and copies
@ this section there.  The page after it (the data page) holds the saved
@ registers of a borrowed thread (struct: r0-r12, sp, lr, pc, cpsr); the one
@ after that is the agent thread's stack.
@
@ Every path a borrowed thread can take while armlp works ends in `restore`,
@ which gives the thread back its own registers: should armlp die in the
@ middle of a system call or a call, the thread finds its way home alone.

	.syntax	unified
	.arm
	.text
	.p2align 12

	.global	armlp_scratch_base
armlp_scratch_base:
.Lbase:

@ A system call on a borrowed thread: armlp sets r0-r5 and r7 and single
@ steps the svc (qemu-user 7.2 steps the next instruction with it).
	.global	armlp_scratch_svc
armlp_scratch_svc:
	svc	#0
	b	.Lrestore

@ The return address of calls, under armlp's breakpoint.
	.global	armlp_scratch_return
armlp_scratch_return:
	b	.Lrestore

@ A system call or a call on the agent while it is parked in the stub
@ behind the shut door (armlp.machine.door): the agent leaves the stub to
@ run it, and must not come back in before armlp has opened the door with
@ the program's threads held.  So it stores r0 and marks the work done in
@ the data page (done = the run's number, which armlp passed in r6), naps
@ until armlp says go, and comes back by sending itself armlp's stop signal.
@ While it naps armlp may post it more system calls (the mailbox: number,
@ arguments, run number): each leaves the stub once for a whole request,
@ and each entry into qemu's stub costs the program a flush of every
@ translation (qemu-user's gdb_handlesig).  Every translation block on the
@ way back is made before the work is marked done, while the threads still
@ run: once they are held, nothing the agent does waits for qemu's
@ translator, whose lock a held thread may hold.  Should go not come within
@ a minute or more (600,000 naps: armlp died), it goes home through restore;
@ a shorter bound sent it home while a slow request on a loaded machine
@ still had it out (the stub then had no thread to serve it).
	.set	armlp_scratch_result, 72	@ data page: the run's r0,
	.set	armlp_scratch_done, 76		@ the run's number once it is there,
	.set	armlp_scratch_go, 80		@ armlp's go: the agent's thread id,
	.set	armlp_scratch_go_signal, 84	@ and armlp's stop signal;
	.set	armlp_scratch_next, 88		@ the mailbox: a system call's number,
	.set	armlp_scratch_next_run, 92	@ its run number,
	.set	armlp_scratch_next_args, 96	@ and r0-r5 (six words)
	.global	armlp_scratch_result, armlp_scratch_done
	.global	armlp_scratch_go, armlp_scratch_go_signal
	.global	armlp_scratch_next, armlp_scratch_next_run, armlp_scratch_next_args
	.global	armlp_scratch_parked_svc
armlp_scratch_parked_svc:
	svc	#0
	.global	armlp_scratch_parked_return
armlp_scratch_parked_return:
.Lparked_return:
	adr	ip, .Lbase
	add	ip, ip, #4096
	str	r0, [ip, #armlp_scratch_result]
	ldr	r4, .Lgo_naps
	mov	r5, #0
1:	ldr	r0, [ip, #armlp_scratch_go]
	cmp	r0, #0
	ldrne	r1, [ip, #armlp_scratch_go_signal]
	movne	r7, #238		@ tkill(go, signal)
	svcne	#0
	bne	.Lrestore		@ if let go from that stop as it is
	ldr	r0, [ip, #armlp_scratch_next]
	cmp	r0, #0
	bne	.Lnext
	@ Ordering: done is 0 on the first pass and the run's number from the
	@ second, when every block on the way back (after the nap, the check)
	@ is translated.
	str	r5, [ip, #armlp_scratch_done]
	mov	r5, r6
	subs	r4, r4, #1
	beq	.Lrestore
	adr	r0, .Lgo_nap		@ nanosleep(&100 us, NULL): the svc keeps ip
	mov	r1, #0
	mov	r7, #162
	svc	#0
	b	1b
@ A posted system call.  Ordering: armlp writes the number last, and the
@ agent takes it (clears it) before making the call.
.Lnext:
	mov	r7, r0
	mov	r0, #0
	str	r0, [ip, #armlp_scratch_next]
	ldr	r6, [ip, #armlp_scratch_next_run]
	add	r0, ip, #armlp_scratch_next_args
	ldm	r0, {r0-r5}
	svc	#0
	b	.Lparked_return
.Lgo_naps:
	.word	600000
.Lgo_nap:
	.word	0, 100000

@ copy(dst = r0, src = r1, n = r2): word by word when all three are word
@ aligned (each aligned word lands with one store, so no thread ever runs
@ half of a rewritten instruction), else byte by byte.
	.global	armlp_scratch_copy
armlp_scratch_copy:
	orr	r3, r0, r1
	orr	r3, r3, r2
	tst	r3, #3
	bne	2f
1:	subs	r2, r2, #4
	bxlt	lr
	ldr	r3, [r1], #4
	str	r3, [r0], #4
	b	1b
2:	subs	r2, r2, #1
	bxlt	lr
	ldrb	r3, [r1], #1
	strb	r3, [r0], #1
	b	2b

@ restore: flags, r0-r11, lr from the save block; r12 and pc (with its
@ Thumb bit) were stored just below the saved sp by armlp.
	.global	armlp_scratch_restore
armlp_scratch_restore:
.Lrestore:
	adr	ip, .Lbase
	add	ip, ip, #4096
	ldr	r0, [ip, #64]
	msr	CPSR_fs, r0
	ldm	ip, {r0-r11}
	ldr	lr, [ip, #56]
	ldr	sp, [ip, #52]
	sub	sp, sp, #8
	pop	{ip, pc}

@ clone(CLONE_VM | CLONE_THREAD | ..., stack) on a borrowed thread starts
@ armlp's agent thread.  The parent gets the agent's id in r0 (and goes
@ home through restore if armlp died meanwhile); the agent goes on below.
	.global	armlp_scratch_clone
armlp_scratch_clone:
	svc	#0
	cmp	r0, #0
	bne	.Lrestore

@ The agent: a thread of the program that belongs to armlp.  It blocks
@ every signal but armlp's stop signal (so the program's process-wide
@ signals go to the program's own threads) and sleeps.  armlp stops the
@ process by sending the stop signal to the agent alone: only the agent's
@ own wait is interrupted, never a system call of the program's.  A stopped
@ agent is also the thread armlp borrows for system calls and calls.
	mov	r0, #2			@ SIG_SETMASK
	adr	r1, .Lagent_mask
	mov	r2, #0
	mov	r3, #8
	mov	r7, #175		@ rt_sigprocmask
	svc	#0
	.global	armlp_scratch_agent_loop
armlp_scratch_agent_loop:
.Lagent_loop:
	adr	r0, .Lagent_futex
	mov	r1, #128		@ FUTEX_WAIT_PRIVATE: sleep while the word is 0
	mov	r2, #0
	mov	r3, #0			@ no timeout
	mov	r7, #240		@ futex
	svc	#0
	b	.Lagent_loop

@ The agent's signal mask (written by armlp: all but its stop signal) and
@ the word it waits on (always 0).
	.p2align 3
	.global	armlp_scratch_agent_mask
armlp_scratch_agent_mask:
.Lagent_mask:
	.word	0xffffffff, 0xffffffff
	.global	armlp_scratch_agent_futex
armlp_scratch_agent_futex:
.Lagent_futex:
	.word	0
