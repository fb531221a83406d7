// SPDX-License-Identifier: GPL-2.0
/*
 * The kernel's lib/livepatch/test_klp_callbacks_demo.c, as an armlp patch:
 * the vmlinux object's four callbacks log where they run; the patch also
 * replaces cmdline_proc_show, so post_patch can be seen to run after the
 * switch (it reads /proc/cmdline through the new code).
 */
#include <linux/seq_file.h>
#include <armlp/livepatch.h>

ARMLP_PATCH("callbacks_demo");

static int callbacks_demo_cmdline(struct seq_file *m, void *v)
{
	seq_puts(m, "callbacks_demo\n");
	return 0;
}

ARMLP_REPLACE(cmdline_proc_show, callbacks_demo_cmdline);

static int pre_patch_callback(struct klp_object *obj)
{
	pr_info("%s: vmlinux\n", __func__);
	return 0;
}

static void post_patch_callback(struct klp_object *obj)
{
	pr_info("%s: vmlinux\n", __func__);
}

static void pre_unpatch_callback(struct klp_object *obj)
{
	pr_info("%s: vmlinux\n", __func__);
}

static void post_unpatch_callback(struct klp_object *obj)
{
	pr_info("%s: vmlinux\n", __func__);
}

ARMLP_CALLBACKS(pre_patch_callback, post_patch_callback, pre_unpatch_callback,
		post_unpatch_callback);
