// SPDX-License-Identifier: GPL-2.0
/*
 * transition.c - switching a patch in or out, under stop_machine
 *
 * The model: no task may be inside a function while the call that reaches
 * it switches between the old and the new code.  All tasks switch at once:
 * under stop_machine every other CPU spins in its stopper, so every task but
 * the stoppers is asleep with its registers saved, and its kernel stack can
 * be walked with the kernel's own unwinder (UNWINDER_ARM, .ARM.exidx).  If a
 * task has a function that is being replaced on its stack, the switch is
 * retried later, with back-off, and `transition` stays 1; `force` switches
 * anyway.
 *
 * What this does not see: the idle tasks (they run only the idle loop and
 * interrupts, and an interrupt cannot be pending under stop_machine) and the
 * stoppers themselves.  The ARM unwinder has no notion of a reliable stack:
 * a frame it cannot unwind ends the walk, so code below it is not checked.
 * Voluntary preemption (Debian's armmp) guarantees no task is switched out
 * between ftrace_regs_caller's handler and the trampoline; a fully
 * preemptible kernel would need that window checked too, so it is refused.
 */
#define pr_fmt(fmt) "armlp: " fmt

#include <linux/kallsyms.h>
#include <linux/sched/signal.h>
#include <linux/sched/task.h>
#include <linux/sched/task_stack.h>
#include <linux/stop_machine.h>
#include <asm/stacktrace.h>
#include "core.h"

#ifdef CONFIG_PREEMPTION
#error "armlp_klp needs a kernel without full preemption (see transition.c)"
#endif

#define KLP_RETRY_FIRST		msecs_to_jiffies(10)
#define KLP_RETRY_MAX		HZ

struct klp_patch *klp_transition_patch;
static int klp_target = KLP_UNPATCHED;
static unsigned long klp_retry_delay;
static bool klp_blocker_reported;
static unsigned int klp_attempts;
static s64 klp_switch_ns;		/* the last stop_machine() call */

static void klp_transition_work_fn(struct work_struct *work);
static DECLARE_DELAYED_WORK(klp_transition_work, klp_transition_work_fn);

struct klp_blocker {
	struct klp_patch *patch;
	struct task_struct *task;
	const char *name;		/* the function found on its stack */
	unsigned long pc;
};

static bool klp_in(unsigned long pc, unsigned long start, unsigned long size)
{
	return pc >= start && pc < start + size;
}

/* Every func of every enabled patch but @patch. */
#define klp_for_each_other_func(patch, other, obj, func)			\
	list_for_each_entry(other, &klp_patches, list)				\
		if (other != (patch))						\
			klp_for_each_object(other, obj)				\
				klp_for_each_func(obj, func)

/* The function a frame's pc is in, if it is code this transition replaces. */
static const char *klp_replaced_at(struct klp_patch *patch, unsigned long pc)
{
	struct klp_patch *other;
	struct klp_object *obj;
	struct klp_func *func, *top;

	/* Atomic replace: the other patches' code goes out too. */
	if (klp_target == KLP_PATCHED && patch->replace)
		klp_for_each_other_func(patch, other, obj, func)
			if (klp_in(pc, (unsigned long)func->new_func, func->new_size) ||
			    klp_in(pc, (unsigned long)func->trampoline, func->tramp_size))
				return func->old_name;

	klp_for_each_object(patch, obj) {
		klp_for_each_func(obj, func) {
			if (klp_target == KLP_UNPATCHED) {
				/* Going out: the new code and its way in. */
				if (klp_in(pc, (unsigned long)func->new_func, func->new_size) ||
				    klp_in(pc, (unsigned long)func->trampoline, func->tramp_size))
					return func->old_name;
				continue;
			}
			/* Coming in: what the site runs now, original or older patch. */
			top = klp_top_func(func);
			if (top ? klp_in(pc, (unsigned long)top->new_func, top->new_size) ||
				  klp_in(pc, (unsigned long)top->trampoline, top->tramp_size)
				: klp_in(pc, func->old_addr, func->old_size))
				return func->old_name;
		}
	}
	return NULL;
}

static int klp_check_frame(struct stackframe *frame, void *data)
{
	struct klp_blocker *b = data;

	b->name = klp_replaced_at(b->patch, frame->pc);
	b->pc = frame->pc;
	return b->name ? 1 : 0;		/* non-zero ends the walk */
}

/* Under stop_machine: is any sleeping task inside code being replaced? */
static bool klp_find_blocker(struct klp_patch *patch, struct klp_blocker *b)
{
	struct task_struct *g, *t;
	struct stackframe frame;

	b->patch = patch;
	for_each_process_thread(g, t) {
		/* Running tasks are this CPU's caller and the other stoppers. */
		if (t == current || READ_ONCE(t->on_cpu))
			continue;
		/*
		 * A task that has exited runs no more code, and its stack may be
		 * freed already: never walk it.  (No refcount is taken: nothing
		 * can free a stack while every CPU is stopped.)
		 */
		if (t->exit_state || !refcount_read(&t->stack_refcount))
			continue;
		memset(&frame, 0, sizeof(frame));
		frame.fp = thread_saved_fp(t);
		frame.sp = thread_saved_sp(t);
		frame.pc = thread_saved_pc(t);
#ifdef CONFIG_KRETPROBES
		frame.tsk = t;
#endif
		b->name = NULL;
		walk_stackframe(&frame, klp_check_frame, b);
		if (b->name) {
			b->task = t;
			return true;
		}
	}
	return false;
}

struct klp_switch {
	struct klp_patch *patch;
	struct klp_blocker blocker;
	pid_t pid;
	char comm[TASK_COMM_LEN];
};

/* Runs on one CPU while every other CPU spins with interrupts off. */
static int klp_switch_fn(void *data)
{
	struct klp_switch *s = data;
	struct klp_patch *patch = s->patch;
	struct klp_patch *other;
	struct klp_object *obj;
	struct klp_func *func;

	if (!patch->forced && klp_find_blocker(patch, &s->blocker)) {
		s->pid = task_pid_nr(s->blocker.task);
		strscpy(s->comm, s->blocker.task->comm, sizeof(s->comm));
		return -EAGAIN;
	}
	klp_for_each_object(patch, obj)
		klp_for_each_func(obj, func) {
			if (klp_target == KLP_PATCHED)
				klp_push_func(func);
			else
				klp_pop_func(func);
		}
	/* Atomic replace: every other patch leaves in this same switch. */
	if (klp_target == KLP_PATCHED && patch->replace)
		klp_for_each_other_func(patch, other, obj, func)
			klp_pop_func(func);
	return 0;
}

static void klp_end_transition(void)
{
	struct klp_patch *patch = klp_transition_patch;

	cancel_delayed_work(&klp_transition_work);
	klp_transition_patch = NULL;
	if (klp_target == KLP_UNPATCHED)
		klp_complete_unpatch(patch);
	else
		klp_complete_patch(patch);
}

void klp_try_complete_transition(void)
{
	struct klp_switch s = { .patch = klp_transition_patch };
	ktime_t start;
	int ret;

	lockdep_assert_held(&klp_mutex);
	if (!s.patch)
		return;
	klp_attempts++;
	start = ktime_get();
	ret = stop_machine(klp_switch_fn, &s, NULL);
	klp_switch_ns = ktime_to_ns(ktime_sub(ktime_get(), start));
	if (ret == -EAGAIN) {
		if (!klp_blocker_reported) {
			pr_notice("%s: pid %d (%s) is in %s (%pS); retrying\n",
				  s.patch->mod->name, s.pid, s.comm, s.blocker.name,
				  (void *)s.blocker.pc);
			klp_blocker_reported = true;
		}
		queue_delayed_work(klp_wq, &klp_transition_work, klp_retry_delay);
		klp_retry_delay = min(klp_retry_delay * 2, (unsigned long)KLP_RETRY_MAX);
		return;
	}
	if (WARN_ON(ret))
		return;
	klp_end_transition();
}

static void klp_transition_work_fn(struct work_struct *work)
{
	mutex_lock(&klp_mutex);
	klp_try_complete_transition();
	mutex_unlock(&klp_mutex);
}

/* Start moving @patch to @target and make the first attempt at once. */
void klp_start_transition(struct klp_patch *patch, int target)
{
	lockdep_assert_held(&klp_mutex);
	klp_transition_patch = patch;
	klp_target = target;
	klp_retry_delay = KLP_RETRY_FIRST;
	klp_blocker_reported = false;
	klp_attempts = 0;
	klp_try_complete_transition();
}

/* " (switch N us, M attempts)": what the log says of the last transition. */
const char *klp_switch_note(void)
{
	static char note[64];

	if (!klp_attempts)
		return "";
	snprintf(note, sizeof(note), " (switch %lld us, %u attempt%s)",
		 div_s64(klp_switch_ns, 1000), klp_attempts, klp_attempts == 1 ? "" : "s");
	return note;
}

/*
 * Disable a patch still waiting to be switched in, or keep one waiting to be
 * switched out.  Nothing switched yet (a switch is all tasks at once), so
 * reversing is only forgetting the pending one.
 */
void klp_reverse_transition(void)
{
	lockdep_assert_held(&klp_mutex);
	klp_target = klp_target == KLP_PATCHED ? KLP_UNPATCHED : KLP_PATCHED;
	klp_transition_patch->enabled = klp_target == KLP_PATCHED;
	pr_notice("'%s': reversing transition from %spatching\n",
		  klp_transition_patch->mod->name, klp_target == KLP_PATCHED ? "un" : "");
	klp_attempts = 0;
	/*
	 * Going back out, its funcs were never pushed: unhooking them is all
	 * there is.  Going back in, its funcs were never popped: it is patched.
	 */
	klp_end_transition();
}

void klp_force_transition(void)
{
	lockdep_assert_held(&klp_mutex);
	pr_warn("%s: forcing the transition; the module can no longer be removed\n",
		klp_transition_patch->mod->name);
	klp_transition_patch->forced = true;
	klp_try_complete_transition();
}
