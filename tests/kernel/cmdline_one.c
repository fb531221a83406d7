// SPDX-License-Identifier: GPL-2.0
/* /proc/cmdline says "one": one of two patches of the same function, stacked. */
#include <linux/seq_file.h>
#include <armlp/livepatch.h>

ARMLP_PATCH("cmdline_one");

static int cmdline_one(struct seq_file *m, void *v)
{
	seq_puts(m, "one\n");
	return 0;
}

ARMLP_REPLACE(cmdline_proc_show, cmdline_one);
