/*
 * armlp in-target runtime: shadow variables, the API of the kernel's
 * kernel/livepatch/shadow.c, for the C code of patches.
 *
 * A patch that needs a field an existing structure does not have attaches
 * it from the side: <obj, id> -> data, in one hash table that lives with the
 * runtime, so a later patch finds what an earlier one attached, by id.
 * Data comes from a fixed arena: first fit over freed blocks, then fresh
 * space; NULL when it is exhausted.
 *
 * One spinlock serialises every operation, taken with the kernel's user
 * helper __kuser_cmpxchg (every ARM Linux maps it; so does armlp's emulator):
 * armv5te, the runtime's baseline, has no ldrex.  Constructors and
 * destructors run under the lock, as the kernel's do under its spinlock:
 * they must not use shadow variables themselves.
 */
#include "armlp_rt.h"

#define SHADOW_BUCKETS	256
#define ARENA_SIZE	(64 * 1024)
#define SPLIT_MIN	32

typedef int (*klp_shadow_ctor_t)(void *obj, void *shadow_data, void *ctor_data);
typedef void (*klp_shadow_dtor_t)(void *obj, void *shadow_data);

/* Before every allocation: its usable size, and the free list's link. */
struct block {
	u32 size;
	struct block *next_free;
};

struct shadow {
	struct shadow *next;
	void *obj;
	unsigned long id;
	u32 pad;		/* data 8-aligned */
	char data[];
};

typedef int kuser_cmpxchg_t(int oldval, int newval, volatile int *ptr);
typedef void kuser_dmb_t(void);
#define kuser_cmpxchg (*(kuser_cmpxchg_t *)0xffff0fc0)
#define kuser_dmb (*(kuser_dmb_t *)0xffff0fa0)

static struct shadow *buckets[SHADOW_BUCKETS];
static struct block *free_list;
static u32 arena_used;
static char arena[ARENA_SIZE] __attribute__((aligned(8)));
static volatile int shadow_lock;

static void lock(void)
{
	while (kuser_cmpxchg(0, 1, &shadow_lock))
		;
}

static void unlock(void)
{
	kuser_dmb();		/* ordering: the table's writes before the release */
	shadow_lock = 0;
}

static u32 bucket(void *obj, unsigned long id)
{
	return (((u32)obj >> 3) ^ id ^ (id >> 8)) % SHADOW_BUCKETS;
}

static void *arena_alloc(u32 size)
{
	struct block **link, *b;

	size = (size + 7) & ~7u;
	for (link = &free_list; (b = *link); link = &b->next_free) {
		if (b->size < size)
			continue;
		*link = b->next_free;
		if (b->size >= size + sizeof(struct block) + SPLIT_MIN) {
			struct block *rest = (struct block *)((char *)(b + 1) + size);

			rest->size = b->size - size - sizeof(struct block);
			rest->next_free = free_list;
			free_list = rest;
			b->size = size;
		}
		return b + 1;
	}
	if (arena_used + sizeof(struct block) + size > ARENA_SIZE)
		return 0;
	b = (struct block *)(arena + arena_used);
	arena_used += sizeof(struct block) + size;
	b->size = size;
	return b + 1;
}

static void arena_free(void *p)
{
	struct block *b = (struct block *)p - 1;

	b->next_free = free_list;
	free_list = b;
}

static struct shadow *find(void *obj, unsigned long id)
{
	struct shadow *s;

	for (s = buckets[bucket(obj, id)]; s; s = s->next)
		if (s->obj == obj && s->id == id)
			return s;
	return 0;
}

void *klp_shadow_get(void *obj, unsigned long id)
{
	struct shadow *s;

	lock();
	s = find(obj, id);
	unlock();
	return s ? s->data : 0;
}

static void *attach(void *obj, unsigned long id, u32 size, klp_shadow_ctor_t ctor,
		    void *ctor_data, int fail_if_exists)
{
	struct shadow *s;
	u32 i;

	lock();
	s = find(obj, id);
	if (s) {
		unlock();
		return fail_if_exists ? 0 : s->data;
	}
	s = arena_alloc(sizeof(*s) + size);
	if (!s) {
		unlock();
		return 0;
	}
	for (i = 0; i < size; i++)
		s->data[i] = 0;
	s->obj = obj;
	s->id = id;
	if (ctor && ctor(obj, s->data, ctor_data)) {
		arena_free(s);
		unlock();
		return 0;
	}
	s->next = buckets[bucket(obj, id)];
	buckets[bucket(obj, id)] = s;
	unlock();
	return s->data;
}

void *klp_shadow_alloc(void *obj, unsigned long id, u32 size, u32 gfp_flags,
		       klp_shadow_ctor_t ctor, void *ctor_data)
{
	(void)gfp_flags;
	return attach(obj, id, size, ctor, ctor_data, 1);
}

void *klp_shadow_get_or_alloc(void *obj, unsigned long id, u32 size, u32 gfp_flags,
			      klp_shadow_ctor_t ctor, void *ctor_data)
{
	(void)gfp_flags;
	return attach(obj, id, size, ctor, ctor_data, 0);
}

/* Under the lock: unlink and free every <obj, id> (any obj if @any_obj). */
static void detach(void *obj, unsigned long id, int any_obj, klp_shadow_dtor_t dtor)
{
	struct shadow **link, *s;
	u32 b;

	for (b = 0; b < SHADOW_BUCKETS; b++) {
		if (!any_obj && b != bucket(obj, id))
			continue;
		for (link = &buckets[b]; (s = *link);) {
			if (s->id != id || (!any_obj && s->obj != obj)) {
				link = &s->next;
				continue;
			}
			*link = s->next;
			if (dtor)
				dtor(s->obj, s->data);
			arena_free(s);
		}
	}
}

void klp_shadow_free(void *obj, unsigned long id, klp_shadow_dtor_t dtor)
{
	lock();
	detach(obj, id, 0, dtor);
	unlock();
}

void klp_shadow_free_all(unsigned long id, klp_shadow_dtor_t dtor)
{
	lock();
	detach(0, id, 1, dtor);
	unlock();
}
