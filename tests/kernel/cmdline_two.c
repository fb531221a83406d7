// SPDX-License-Identifier: GPL-2.0
/* /proc/cmdline says "two": one of two patches of the same function, stacked. */
#include <linux/seq_file.h>
#include <armlp/livepatch.h>

ARMLP_PATCH("cmdline_two");

static int cmdline_two(struct seq_file *m, void *v)
{
	seq_puts(m, "two\n");
	return 0;
}

ARMLP_REPLACE(cmdline_proc_show, cmdline_two);
