// SPDX-License-Identifier: GPL-2.0
/*
 * test-livepatch's "atomic replace livepatch", for armlp: a cumulative patch
 * of cmdline_proc_show alone replaces every enabled patch; the functions
 * they changed and it does not (version_proc_show) go back to the original.
 */
#include <linux/seq_file.h>
#include <armlp/livepatch.h>

ARMLP_PATCH("cumulative");
ARMLP_ATOMIC_REPLACE;

static int cumulative_cmdline(struct seq_file *m, void *v)
{
	seq_puts(m, "cumulative\n");
	return 0;
}

ARMLP_REPLACE(cmdline_proc_show, cumulative_cmdline);
