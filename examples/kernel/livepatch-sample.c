// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * The kernel's samples/livepatch/livepatch-sample.c, as an armlp patch:
 * /proc/cmdline says it has been live patched.
 *
 *   armlp kernel build examples/kernel/livepatch-sample.c --out build/ksample
 *   (in the guest) insmod armlp_klp.ko; insmod livepatch_sample.ko
 *   cat /proc/cmdline                 -> this has been live patched
 *   echo 0 > /sys/kernel/livepatch/livepatch_sample/enabled
 *   cat /proc/cmdline                 -> the boot command line again
 *   rmmod livepatch_sample
 */
#include <linux/seq_file.h>
#include <armlp/livepatch.h>

ARMLP_PATCH("livepatch_sample");

static int livepatch_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%s\n", "this has been live patched");
	return 0;
}

ARMLP_REPLACE(cmdline_proc_show, livepatch_cmdline_proc_show);
