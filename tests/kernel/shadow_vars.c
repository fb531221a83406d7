// SPDX-License-Identifier: GPL-2.0
/*
 * Shadow variables, as the kernel's lib/livepatch/test_klp_shadow_vars.c
 * exercises them (run by post_patch), and in use: the new
 * cmdline_proc_show counts each task's reads in a shadow variable attached
 * to the task; post_unpatch frees them all.
 */
#include <linux/sched.h>
#include <linux/seq_file.h>
#include <linux/slab.h>
#include <armlp/livepatch.h>

ARMLP_PATCH("shadow_vars");

#define READS_ID	0x5ead
#define TEST_ID		0x1234

static int reads_ctor(void *obj, void *shadow_data, void *ctor_data)
{
	*(int *)shadow_data = 0;
	return 0;
}

static int shadow_cmdline(struct seq_file *m, void *v)
{
	int *reads = klp_shadow_get_or_alloc(current, READS_ID, sizeof(*reads),
					     GFP_KERNEL, reads_ctor, NULL);

	if (!reads)
		return -ENOMEM;
	seq_printf(m, "reads by this task: %d\n", ++*reads);
	return 0;
}

ARMLP_REPLACE(cmdline_proc_show, shadow_cmdline);

static int value_ctor(void *obj, void *shadow_data, void *ctor_data)
{
	*(int *)shadow_data = *(int *)ctor_data;
	return 0;
}

static void value_dtor(void *obj, void *shadow_data)
{
	pr_info("shadow_vars: dtor <obj%d, %#x> value %d\n", *(int *)obj == 1 ? 1 : 2,
		TEST_ID, *(int *)shadow_data);
}

static int obj1 = 1, obj2 = 2;

static void shadow_unit(void)
{
	int v1 = 11, v2 = 22;
	int *s1, *s2, *again;

	s1 = klp_shadow_alloc(&obj1, TEST_ID, sizeof(int), GFP_KERNEL, value_ctor, &v1);
	s2 = klp_shadow_alloc(&obj2, TEST_ID, sizeof(int), GFP_KERNEL, value_ctor, &v2);
	pr_info("shadow_vars: alloc <obj1> %d, <obj2> %d\n", s1 ? *s1 : -1, s2 ? *s2 : -1);
	pr_info("shadow_vars: get <obj1> %s\n",
		klp_shadow_get(&obj1, TEST_ID) == s1 ? "same" : "DIFFERENT");
	again = klp_shadow_get_or_alloc(&obj1, TEST_ID, sizeof(int), GFP_KERNEL,
					value_ctor, &v2);
	pr_info("shadow_vars: get_or_alloc <obj1> %s, value %d\n",
		again == s1 ? "same" : "DIFFERENT", again ? *again : -1);
	/* a collision: the one clear line comes from armlp_klp */
	again = klp_shadow_alloc(&obj1, TEST_ID, sizeof(int), GFP_KERNEL, value_ctor, &v2);
	pr_info("shadow_vars: alloc <obj1> again %s\n", again ? "ALLOCATED" : "refused");
	klp_shadow_free(&obj1, TEST_ID, value_dtor);
	pr_info("shadow_vars: get <obj1> after free %s\n",
		klp_shadow_get(&obj1, TEST_ID) ? "FOUND" : "gone");
	klp_shadow_free_all(TEST_ID, value_dtor);
	pr_info("shadow_vars: get <obj2> after free_all %s\n",
		klp_shadow_get(&obj2, TEST_ID) ? "FOUND" : "gone");
}

static void post_patch(struct klp_object *obj)
{
	shadow_unit();
}

static void reads_dtor(void *obj, void *shadow_data)
{
	pr_info("shadow_vars: task %s read %d times\n", ((struct task_struct *)obj)->comm,
		*(int *)shadow_data);
}

static void post_unpatch(struct klp_object *obj)
{
	klp_shadow_free_all(READS_ID, reads_dtor);
}

ARMLP_CALLBACKS(NULL, post_patch, NULL, post_unpatch);
