// SPDX-License-Identifier: GPL-2.0
/* test-callbacks' "pre-patch callback -ENODEV": the patch is refused and
 * nothing changes. */
#include <linux/seq_file.h>
#include <armlp/livepatch.h>

ARMLP_PATCH("callbacks_refuse");

static int refused_cmdline(struct seq_file *m, void *v)
{
	seq_puts(m, "refused\n");
	return 0;
}

ARMLP_REPLACE(cmdline_proc_show, refused_cmdline);

static int pre_patch_callback(struct klp_object *obj)
{
	pr_info("%s: vmlinux: refusing\n", __func__);
	return -ENODEV;
}

ARMLP_CALLBACKS(pre_patch_callback, NULL, NULL, NULL);
