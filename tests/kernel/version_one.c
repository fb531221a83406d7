// SPDX-License-Identifier: GPL-2.0
/* /proc/version says "version one": the function a cumulative patch drops. */
#include <linux/seq_file.h>
#include <armlp/livepatch.h>

ARMLP_PATCH("version_one");

static int version_one(struct seq_file *m, void *v)
{
	seq_puts(m, "version one\n");
	return 0;
}

ARMLP_REPLACE(version_proc_show, version_one);
