// SPDX-License-Identifier: GPL-2.0
/*
 * shadow.c - shadow variables, the API of kernel/livepatch/shadow.c
 *
 * A patch that needs a field an existing structure does not have attaches
 * it from the side: <obj, id> -> data, in one hash table, kept across
 * patches (a later patch finds what an earlier one attached, by id).
 *
 * Readers walk the table under RCU; writers take klp_shadow_lock.  An
 * allocation is made before the lock is taken (it may sleep) and dropped if
 * another CPU attached the same <obj, id> meanwhile.
 */
#define pr_fmt(fmt) "armlp: " fmt

#include <linux/hashtable.h>
#include <linux/rculist.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include "klp.h"

static DEFINE_HASHTABLE(klp_shadow_hash, 12);
static DEFINE_SPINLOCK(klp_shadow_lock);

struct klp_shadow {
	struct hlist_node node;
	struct rcu_head rcu_head;
	void *obj;
	unsigned long id;
	char data[];
};

static struct klp_shadow *klp_shadow_find(void *obj, unsigned long id)
{
	struct klp_shadow *shadow;

	hash_for_each_possible_rcu(klp_shadow_hash, shadow, node, (unsigned long)obj)
		if (shadow->obj == obj && shadow->id == id)
			return shadow;
	return NULL;
}

/**
 * klp_shadow_get() - the data of <@obj, @id>, or NULL
 */
void *klp_shadow_get(void *obj, unsigned long id)
{
	struct klp_shadow *shadow;

	rcu_read_lock();
	shadow = klp_shadow_find(obj, id);
	rcu_read_unlock();
	return shadow ? shadow->data : NULL;
}
EXPORT_SYMBOL_GPL(klp_shadow_get);

static void *klp_shadow_attach(void *obj, unsigned long id, size_t size,
			       gfp_t gfp_flags, klp_shadow_ctor_t ctor,
			       void *ctor_data, bool warn_on_exist)
{
	struct klp_shadow *new, *shadow;
	unsigned long flags;
	int err;

	rcu_read_lock();
	shadow = klp_shadow_find(obj, id);
	rcu_read_unlock();
	if (shadow)
		goto exists;

	/* Allocate before the lock: GFP_KERNEL may sleep. */
	new = kzalloc(size + sizeof(*new), gfp_flags);
	if (!new)
		return NULL;

	spin_lock_irqsave(&klp_shadow_lock, flags);
	shadow = klp_shadow_find(obj, id);
	if (unlikely(shadow)) {
		/* Attached by another CPU meanwhile. */
		spin_unlock_irqrestore(&klp_shadow_lock, flags);
		kfree(new);
		goto exists;
	}
	new->obj = obj;
	new->id = id;
	if (ctor) {
		err = ctor(obj, new->data, ctor_data);
		if (err) {
			spin_unlock_irqrestore(&klp_shadow_lock, flags);
			kfree(new);
			pr_err("shadow <%px, %lx>: constructor failed (%d)\n", obj, id, err);
			return NULL;
		}
	}
	/* Ordering: the data is complete before readers can find it. */
	hash_add_rcu(klp_shadow_hash, &new->node, (unsigned long)new->obj);
	spin_unlock_irqrestore(&klp_shadow_lock, flags);
	return new->data;

exists:
	if (warn_on_exist) {
		pr_err("shadow <%px, %lx> exists already: not allocated again\n", obj, id);
		return NULL;
	}
	return shadow->data;
}

/**
 * klp_shadow_alloc() - attach new data to <@obj, @id>
 *
 * Returns NULL (and says so in the log) if <@obj, @id> has data already, if
 * the allocation fails or @ctor refuses.  @ctor runs under a spinlock.
 */
void *klp_shadow_alloc(void *obj, unsigned long id, size_t size, gfp_t gfp_flags,
		       klp_shadow_ctor_t ctor, void *ctor_data)
{
	return klp_shadow_attach(obj, id, size, gfp_flags, ctor, ctor_data, true);
}
EXPORT_SYMBOL_GPL(klp_shadow_alloc);

/**
 * klp_shadow_get_or_alloc() - the data of <@obj, @id>, attached if missing
 */
void *klp_shadow_get_or_alloc(void *obj, unsigned long id, size_t size,
			      gfp_t gfp_flags, klp_shadow_ctor_t ctor, void *ctor_data)
{
	return klp_shadow_attach(obj, id, size, gfp_flags, ctor, ctor_data, false);
}
EXPORT_SYMBOL_GPL(klp_shadow_get_or_alloc);

static void klp_shadow_free_struct(struct klp_shadow *shadow, klp_shadow_dtor_t dtor)
{
	hash_del_rcu(&shadow->node);
	if (dtor)
		dtor(shadow->obj, shadow->data);
	kfree_rcu(shadow, rcu_head);
}

/**
 * klp_shadow_free() - detach and free the data of <@obj, @id>
 * @dtor:	called first (under a spinlock), may be NULL
 */
void klp_shadow_free(void *obj, unsigned long id, klp_shadow_dtor_t dtor)
{
	struct klp_shadow *shadow;
	unsigned long flags;

	spin_lock_irqsave(&klp_shadow_lock, flags);
	shadow = klp_shadow_find(obj, id);
	if (shadow)
		klp_shadow_free_struct(shadow, dtor);
	spin_unlock_irqrestore(&klp_shadow_lock, flags);
}
EXPORT_SYMBOL_GPL(klp_shadow_free);

/**
 * klp_shadow_free_all() - detach and free the data of every <*, @id>
 */
void klp_shadow_free_all(unsigned long id, klp_shadow_dtor_t dtor)
{
	struct klp_shadow *shadow;
	struct hlist_node *tmp;
	unsigned long flags;
	int i;

	spin_lock_irqsave(&klp_shadow_lock, flags);
	hash_for_each_safe(klp_shadow_hash, i, tmp, shadow, node)
		if (shadow->id == id)
			klp_shadow_free_struct(shadow, dtor);
	spin_unlock_irqrestore(&klp_shadow_lock, flags);
}
EXPORT_SYMBOL_GPL(klp_shadow_free_all);
