// SPDX-License-Identifier: GPL-2.0
/*
 * do_nanosleep() (kernel/time/hrtimer.c, 6.1) as it is, plus one line in the
 * log: a function tasks sleep in, to show the consistency model wait for
 * them.  nanosleep_copyout() is not exported: ARMLP_SYMBOL names it.
 */
#include <linux/hrtimer.h>
#include <linux/sched.h>
#include <linux/sched/signal.h>
#include <armlp/livepatch.h>

ARMLP_PATCH("nanosleep_fix");

extern int armlp_nanosleep_copyout(struct restart_block *, struct timespec64 *)
	ARMLP_SYMBOL(nanosleep_copyout, 0);

static int do_nanosleep_fixed(struct hrtimer_sleeper *t, enum hrtimer_mode mode)
{
	struct restart_block *restart;

	pr_info_once("nanosleep_fix: do_nanosleep replaced\n");
	do {
		set_current_state(TASK_INTERRUPTIBLE | TASK_FREEZABLE);
		hrtimer_sleeper_start_expires(t, mode);

		if (likely(t->task))
			schedule();

		hrtimer_cancel(&t->timer);
		mode = HRTIMER_MODE_ABS;

	} while (t->task && !signal_pending(current));

	__set_current_state(TASK_RUNNING);

	if (!t->task)
		return 0;

	restart = &current->restart_block;
	if (restart->nanosleep.type != TT_NONE) {
		ktime_t rem = hrtimer_expires_remaining(&t->timer);
		struct timespec64 rmt;

		if (rem <= 0)
			return 0;
		rmt = ktime_to_timespec64(rem);

		return armlp_nanosleep_copyout(restart, &rmt);
	}
	return -ERESTART_RESTARTBLOCK;
}

ARMLP_REPLACE(do_nanosleep, do_nanosleep_fixed);
