// SPDX-License-Identifier: GPL-2.0
/*
 * core.c - armlp_klp: patches, their checks and their sysfs view
 *
 * The sysfs view is upstream's, under the same path:
 *
 *   /sys/kernel/livepatch/<patch>/{enabled,transition,force}
 *   /sys/kernel/livepatch/<patch>/<object>/patched
 *   /sys/kernel/livepatch/<patch>/<object>/<function,sympos>/
 *
 * A patch is enabled when its module loads and disabled by writing 0 to
 * `enabled`; once the switch out is complete its view goes away and its
 * module may be removed (the module reference is held until then).
 */
#define pr_fmt(fmt) "armlp: " fmt

#include <linux/crc32.h>
#include <linux/kallsyms.h>
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/utsname.h>
#include "core.h"

DEFINE_MUTEX(klp_mutex);
struct workqueue_struct *klp_wq;

LIST_HEAD(klp_patches);
static struct kobject *klp_root_kobj;

static void klp_free_replaced(struct klp_patch *patch);

/* sysfs: <patch> */

static ssize_t enabled_show(struct kobject *kobj, struct kobj_attribute *attr, char *buf)
{
	struct klp_patch *patch = container_of(kobj, struct klp_patch, kobj);

	return sysfs_emit(buf, "%d\n", patch->enabled);
}

static ssize_t enabled_store(struct kobject *kobj, struct kobj_attribute *attr,
			     const char *buf, size_t count)
{
	struct klp_patch *patch = container_of(kobj, struct klp_patch, kobj);
	struct klp_object *obj;
	bool enabled;
	int ret;

	ret = kstrtobool(buf, &enabled);
	if (ret)
		return ret;

	mutex_lock(&klp_mutex);
	if (patch->enabled == enabled) {
		ret = -EINVAL;		/* already there, or on its way */
	} else if (patch == klp_transition_patch) {
		klp_reverse_transition();
	} else if (enabled) {
		ret = -EINVAL;		/* a disabled patch is gone; load it again */
	} else if (klp_transition_patch) {
		ret = -EBUSY;		/* one transition at a time */
	} else {
		patch->enabled = false;
		pr_notice("'%s': initializing unpatching transition\n", patch->mod->name);
		klp_for_each_object(patch, obj)
			if (obj->patched && obj->callbacks.pre_unpatch)
				obj->callbacks.pre_unpatch(obj);
		pr_notice("'%s': starting unpatching transition\n", patch->mod->name);
		klp_start_transition(patch, KLP_UNPATCHED);
	}
	mutex_unlock(&klp_mutex);
	return ret ? ret : count;
}

static ssize_t transition_show(struct kobject *kobj, struct kobj_attribute *attr, char *buf)
{
	struct klp_patch *patch = container_of(kobj, struct klp_patch, kobj);

	return sysfs_emit(buf, "%d\n", patch == READ_ONCE(klp_transition_patch));
}

static ssize_t force_store(struct kobject *kobj, struct kobj_attribute *attr,
			   const char *buf, size_t count)
{
	struct klp_patch *patch = container_of(kobj, struct klp_patch, kobj);
	bool val;
	int ret;

	ret = kstrtobool(buf, &val);
	if (ret)
		return ret;
	if (!val)
		return count;

	mutex_lock(&klp_mutex);
	if (patch != klp_transition_patch)
		ret = -EINVAL;		/* nothing to force */
	else
		klp_force_transition();
	mutex_unlock(&klp_mutex);
	return ret ? ret : count;
}

static struct kobj_attribute enabled_kobj_attr = __ATTR_RW(enabled);
static struct kobj_attribute transition_kobj_attr = __ATTR_RO(transition);
static struct kobj_attribute force_kobj_attr = __ATTR_WO(force);
static struct attribute *klp_patch_attrs[] = {
	&enabled_kobj_attr.attr,
	&transition_kobj_attr.attr,
	&force_kobj_attr.attr,
	NULL
};
ATTRIBUTE_GROUPS(klp_patch);

/* sysfs: <object> */

static ssize_t patched_show(struct kobject *kobj, struct kobj_attribute *attr, char *buf)
{
	struct klp_object *obj = container_of(kobj, struct klp_object, kobj);

	return sysfs_emit(buf, "%d\n", obj->patched);
}

static struct kobj_attribute patched_kobj_attr = __ATTR_RO(patched);
static struct attribute *klp_object_attrs[] = {
	&patched_kobj_attr.attr,
	NULL,
};
ATTRIBUTE_GROUPS(klp_object);

/* The kobjects live in the patch module: their release has nothing to free. */
static void klp_kobj_release(struct kobject *kobj)
{
}

static struct kobj_type klp_ktype_patch = {
	.release = klp_kobj_release,
	.sysfs_ops = &kobj_sysfs_ops,
	.default_groups = klp_patch_groups,
};

static struct kobj_type klp_ktype_object = {
	.release = klp_kobj_release,
	.sysfs_ops = &kobj_sysfs_ops,
	.default_groups = klp_object_groups,
};

static struct kobj_type klp_ktype_func = {
	.release = klp_kobj_release,
	.sysfs_ops = &kobj_sysfs_ops,
};

static const char *klp_obj_name(struct klp_object *obj)
{
	return obj->name ? obj->name : "vmlinux";
}

static void klp_del_view(struct klp_patch *patch)
{
	struct klp_object *obj;
	struct klp_func *func;

	klp_for_each_object(patch, obj) {
		klp_for_each_func(obj, func)
			kobject_put(&func->kobj);
		kobject_put(&obj->kobj);
	}
	kobject_put(&patch->kobj);
}

static int klp_add_view(struct klp_patch *patch)
{
	struct klp_object *obj;
	struct klp_func *func;
	int ret;

	kobject_init(&patch->kobj, &klp_ktype_patch);
	klp_for_each_object(patch, obj) {
		kobject_init(&obj->kobj, &klp_ktype_object);
		klp_for_each_func(obj, func)
			kobject_init(&func->kobj, &klp_ktype_func);
		obj->patch = patch;
	}
	ret = kobject_add(&patch->kobj, klp_root_kobj, "%s", patch->mod->name);
	klp_for_each_object(patch, obj) {
		if (!ret)
			ret = kobject_add(&obj->kobj, &patch->kobj, "%s", klp_obj_name(obj));
		klp_for_each_func(obj, func)
			if (!ret)
				ret = kobject_add(&func->kobj, &obj->kobj, "%s,%lu",
						  func->old_name,
						  func->old_sympos ? func->old_sympos : 1);
	}
	if (ret)
		klp_del_view(patch);
	return ret;
}

static void klp_free_patch_work_fn(struct work_struct *work)
{
	struct klp_patch *patch = container_of(work, struct klp_patch, free_work);

	klp_del_view(patch);
	/* Ordering: the view is gone before the module may go. */
	if (!patch->forced)
		module_put(patch->mod);
}

/* Called with klp_mutex held once every task runs @patch's code. */
void klp_complete_patch(struct klp_patch *patch)
{
	struct klp_object *obj;

	pr_notice("'%s': completing patching transition\n", patch->mod->name);
	if (patch->replace)
		klp_free_replaced(patch);
	klp_for_each_object(patch, obj)
		if (obj->patched && obj->callbacks.post_patch)
			obj->callbacks.post_patch(obj);
	pr_notice("'%s': patching complete%s\n", patch->mod->name, klp_switch_note());
}

/* The post_unpatch callbacks owed to objects whose pre_patch ran. */
static void klp_post_unpatch(struct klp_patch *patch)
{
	struct klp_object *obj;

	klp_for_each_object(patch, obj) {
		if (obj->callbacks.post_unpatch_enabled && obj->callbacks.post_unpatch)
			obj->callbacks.post_unpatch(obj);
		obj->callbacks.post_unpatch_enabled = false;
	}
}

/*
 * Called with klp_mutex held once @patch is switched out (or its switch in
 * was reversed): no task runs its code and no site leads to it any more.
 */
void klp_complete_unpatch(struct klp_patch *patch)
{
	struct klp_object *obj;

	pr_notice("'%s': completing unpatching transition\n", patch->mod->name);
	klp_for_each_object(patch, obj)
		klp_unhook_object(obj);
	klp_post_unpatch(patch);
	patch->enabled = false;
	list_del(&patch->list);
	pr_notice("'%s': unpatching complete%s\n", patch->mod->name, klp_switch_note());
	/* Not from here: we may be in this patch's own `enabled` store. */
	queue_work(klp_wq, &patch->free_work);
}

/* system states */

/**
 * klp_get_state() - @patch's state @id, or NULL
 */
struct klp_state *klp_get_state(struct klp_patch *patch, unsigned long id)
{
	struct klp_state *state;

	klp_for_each_state(patch, state)
		if (state->id == id)
			return state;
	return NULL;
}
EXPORT_SYMBOL_GPL(klp_get_state);

/**
 * klp_get_prev_state() - state @id of the newest patch enabled before the
 * one in transition, or NULL: what a new patch takes over.
 */
struct klp_state *klp_get_prev_state(unsigned long id)
{
	struct klp_patch *patch;
	struct klp_state *state, *last = NULL;

	list_for_each_entry(patch, &klp_patches, list) {
		if (patch == klp_transition_patch)
			break;
		state = klp_get_state(patch, id);
		if (state)
			last = state;
	}
	return last;
}
EXPORT_SYMBOL_GPL(klp_get_prev_state);

/*
 * upstream's rule: every state an enabled patch made must be known to the
 * new one in the same or a newer version; a patch that replaces all others
 * must take over every state (nothing else will undo it).
 */
static int klp_check_states(struct klp_patch *patch)
{
	struct klp_patch *old;
	struct klp_state *old_state, *state;

	list_for_each_entry(old, &klp_patches, list) {
		klp_for_each_state(old, old_state) {
			state = klp_get_state(patch, old_state->id);
			if (state ? state->version >= old_state->version : !patch->replace)
				continue;
			pr_err("'%s': not compatible with '%s': system state %lu version %u %s: refused\n",
			       patch->mod->name, old->mod->name, old_state->id, old_state->version,
			       state ? "is newer" : "would be dropped by the replace");
			return -EINVAL;
		}
	}
	return 0;
}

/*
 * After an atomic replace switched in @patch: every other patch is out (its
 * funcs were popped in the same switch).  Their callbacks do not run: the
 * replacing patch's own took over, as upstream.
 */
static void klp_free_replaced(struct klp_patch *patch)
{
	struct klp_patch *old, *tmp;
	struct klp_object *obj;

	list_for_each_entry_safe(old, tmp, &klp_patches, list) {
		if (old == patch)
			continue;
		klp_for_each_object(old, obj) {
			klp_unhook_object(obj);
			obj->callbacks.post_unpatch_enabled = false;
		}
		old->enabled = false;
		list_del(&old->list);
		pr_notice("'%s': replaced by '%s'\n", old->mod->name, patch->mod->name);
		queue_work(klp_wq, &old->free_work);
	}
}

/* checks before anything changes */

/*
 * Whether @have, what kallsyms printed for an address ("name+0x0/0x..."),
 * names one of @aliases (space separated) at that address.
 */
static bool klp_is_alias(const char *have, const char *aliases)
{
	const char *plus = strchr(have, '+');
	size_t len, n;

	if (!aliases || !plus || strncmp(plus, "+0x0/", 5))
		return false;
	len = plus - have;
	for (; *aliases; aliases += n + (aliases[n] == ' ')) {
		n = strcspn(aliases, " ");
		if (n == len && !strncmp(aliases, have, len))
			return true;
	}
	return false;
}

/*
 * kallsyms says @addr is the start of @name, of @size bytes (0: any size),
 * or of one of its @aliases; else -EINVAL.
 */
static int klp_check_symbol(struct klp_patch *patch, unsigned long addr,
			    const char *name, unsigned long size, const char *aliases)
{
	char have[KSYM_SYMBOL_LEN], want[KSYM_SYMBOL_LEN];

	sprint_symbol(have, addr);
	/*
	 * Without CONFIG_KALLSYMS_ALL (Debian's armmp) kallsyms names no data:
	 * an address it cannot name is taken on the release's word.  Code is
	 * always named, so a function is always checked.
	 */
	if (!IS_ENABLED(CONFIG_KALLSYMS_ALL) && !size && strncmp(have, "0x", 2) == 0)
		return 0;
	if (size)
		snprintf(want, sizeof(want), "%s+0x0/0x%lx", name, size);
	else
		snprintf(want, sizeof(want), "%s+0x0/", name);
	if (size ? strcmp(have, want) == 0 : strncmp(have, want, strlen(want)) == 0)
		return 0;
	if (klp_is_alias(have, aliases))
		return 0;
	pr_err("%s: %s: expected at %px, found %s: not the kernel the patch was built for\n",
	       patch->mod->name, name, (void *)addr, have);
	return -EINVAL;
}

/* The replacement's size, for the stack check, from kallsyms. */
static int klp_new_size(struct klp_patch *patch, struct klp_func *func)
{
	char buf[KSYM_SYMBOL_LEN];
	char *slash, *end;

	sprint_symbol(buf, (unsigned long)func->new_func);
	slash = strchr(buf, '/');
	end = slash ? strchr(slash, ' ') : NULL;
	if (end)
		*end = '\0';
	if (!slash || kstrtoul(slash + 1, 16, &func->new_size) || !func->new_size) {
		pr_err("%s: no size for the replacement of %s (%s)\n", patch->mod->name,
		       func->old_name, buf);
		return -EINVAL;
	}
	return 0;
}

static int klp_check_func(struct klp_patch *patch, struct klp_func *func)
{
	static const u8 zero[4];
	unsigned long off = func->site - func->old_addr;
	const u8 *code = (const u8 *)func->old_addr;
	u32 crc;
	int ret;

	if (!func->new_func || !func->trampoline || off + 4 > func->old_size) {
		pr_err("%s: %s: malformed description\n", patch->mod->name, func->old_name);
		return -EINVAL;
	}
	ret = klp_check_symbol(patch, func->old_addr, func->old_name, func->old_size,
			       NULL);
	if (ret)
		return ret;
	/* The site word is ftrace's (NOP, tracer or ours): the rest is the build's. */
	crc = crc32_le(~0, code, off);
	crc = crc32_le(crc, zero, sizeof(zero));
	crc = crc32_le(crc, code + off + 4, func->old_size - off - 4);
	if ((crc ^ ~0U) != func->old_crc) {
		pr_err("%s: %s: the running code differs from the build's (crc %08x, built %08x): refused\n",
		       patch->mod->name, func->old_name, crc ^ ~0U, func->old_crc);
		return -EINVAL;
	}
	return klp_new_size(patch, func);
}

static int klp_check_patch(struct klp_patch *patch)
{
	struct klp_sym *sym;
	struct klp_object *obj;
	struct klp_func *func;
	int ret;

	if (strcmp(patch->release, init_utsname()->release)) {
		pr_err("%s: built for %s, this kernel is %s: refused\n", patch->mod->name,
		       patch->release, init_utsname()->release);
		return -EINVAL;
	}
	for (sym = patch->syms; sym && sym->name; sym++) {
		ret = klp_check_symbol(patch, sym->addr, sym->name, 0, sym->aliases);
		if (ret)
			return ret;
	}
	klp_for_each_object(patch, obj) {
		if (obj->name) {
			pr_err("%s: object %s: only vmlinux can be patched\n",
			       patch->mod->name, obj->name);
			return -EINVAL;
		}
		klp_for_each_func(obj, func) {
			ret = klp_check_func(patch, func);
			if (ret)
				return ret;
		}
	}
	return 0;
}

/**
 * klp_enable_patch() - check, hook and switch in a patch
 * @patch:	the patch module's description of itself
 *
 * Called from the patch module's init.  Nothing changes unless every check
 * passes.  Returns once the transition started; `transition` says if it ended.
 */
int klp_enable_patch(struct klp_patch *patch)
{
	struct klp_object *obj;
	int ret;

	mutex_lock(&klp_mutex);
	if (klp_transition_patch) {
		pr_err("%s: %s is in transition: try again\n", patch->mod->name,
		       klp_transition_patch->mod->name);
		ret = -EBUSY;
		goto out;
	}
	ret = klp_check_patch(patch);
	if (!ret)
		ret = klp_check_states(patch);
	if (ret)
		goto out;
	if (!try_module_get(patch->mod)) {
		ret = -ENODEV;
		goto out;
	}
	INIT_WORK(&patch->free_work, klp_free_patch_work_fn);
	ret = klp_add_view(patch);
	if (ret)
		goto put;
	add_taint(TAINT_LIVEPATCH, LOCKDEP_STILL_OK);
	pr_notice("enabling patch '%s'\n", patch->mod->name);
	pr_notice("'%s': initializing patching transition\n", patch->mod->name);
	klp_for_each_object(patch, obj) {
		/* Ordering: pre_patch runs before the object's sites are hooked. */
		if (obj->callbacks.pre_patch) {
			ret = obj->callbacks.pre_patch(obj);
			if (ret) {
				pr_err("'%s': pre-patch callback failed for object '%s' (%d): refused\n",
				       patch->mod->name, klp_obj_name(obj), ret);
				goto unhook;
			}
		}
		obj->callbacks.post_unpatch_enabled = true;
		ret = klp_hook_object(obj);
		if (ret)
			goto unhook;
	}
	list_add_tail(&patch->list, &klp_patches);
	patch->enabled = true;
	pr_notice("'%s': starting patching transition\n", patch->mod->name);
	klp_start_transition(patch, KLP_PATCHED);
	mutex_unlock(&klp_mutex);
	return 0;

unhook:
	klp_for_each_object(patch, obj)
		klp_unhook_object(obj);
	klp_post_unpatch(patch);
	klp_del_view(patch);
put:
	module_put(patch->mod);
out:
	mutex_unlock(&klp_mutex);
	return ret;
}
EXPORT_SYMBOL_GPL(klp_enable_patch);

static int __init klp_init(void)
{
	klp_wq = alloc_workqueue("armlp_klp", 0, 0);
	if (!klp_wq)
		return -ENOMEM;
	klp_root_kobj = kobject_create_and_add("livepatch", kernel_kobj);
	if (!klp_root_kobj) {
		pr_err("cannot create /sys/kernel/livepatch (does this kernel have its own?)\n");
		destroy_workqueue(klp_wq);
		return -ENOMEM;
	}
	return 0;
}

static void __exit klp_exit(void)
{
	/*
	 * Patch modules use our symbols, so none is loaded any more; a free
	 * work may still be returning from its module_put(): drain it.
	 */
	destroy_workqueue(klp_wq);
	kobject_put(klp_root_kobj);
}

module_init(klp_init);
module_exit(klp_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("armlp: livepatch core for 32-bit ARM kernels with ftrace");
