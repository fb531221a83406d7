/*
 * armlp/livepatch.h: declare what a live patch replaces.
 *
 * A live patch is a relocatable ARM object (compile with the flags
 * `armlp cflags` prints).  Each ARMLP_REPLACE puts one descriptor in the
 * object's .armlp.funcs section; armlp reads them after relocating the
 * object, so the pointers below are final addresses by then.
 *
 *   #include <armlp/livepatch.h>
 *   ARMLP_PATCH("fix-checksum");
 *   static int checksum_fixed(const char *p, int n) { ... }
 *   ARMLP_REPLACE(checksum, checksum_fixed);          // unique name
 *   ARMLP_REPLACE_POS(helper, 2, helper_fixed);       // the 2nd static "helper"
 *
 * Replacements are built with -pg -mapcs-frame like the program, may call
 * its functions and use its data, statics included (declare them extern;
 * a static shared by several files is named `.klp.sym.<object>.<name>,<pos>`
 * through ARMLP_SYMBOL).
 *
 * The same macros write a kernel live patch (built with `armlp kernel
 * build`, where __KERNEL__ is defined): see the kernel half below.
 */
#ifndef ARMLP_LIVEPATCH_H
#define ARMLP_LIVEPATCH_H

#define ARMLP__CAT2(a, b) a##b
#define ARMLP__CAT(a, b) ARMLP__CAT2(a, b)

/* The patch's name (default: the object file's name). */
#define ARMLP_PATCH(name)                                                      \
	static const char armlp__patch_name[]                                  \
	__attribute__((section(".armlp.name"), used)) = name

/* Replace OLD (with sympos POS) by NEW.  OLD is taken as written, even if a
 * -D macro renames that identifier in the patch (to build a copy of the
 * program's own source under another name). */
#define ARMLP_REPLACE_POS(old, pos, new) ARMLP__DESC(#old, pos, new)
#define ARMLP_REPLACE(old, new) ARMLP__DESC(#old, 0, new)

/*
 * Atomic replace (the kernel's klp_patch.replace): this patch replaces every
 * enabled patch at once; what they changed and it does not goes back to the
 * original code, and they are disabled (their callbacks do not run).
 */
#define ARMLP_ATOMIC_REPLACE                                                   \
	static const char armlp__replace                                       \
	__attribute__((section(".armlp.replace"), used)) = 1

/*
 * A system state this patch makes or takes over (the kernel's klp_state):
 * every state of an enabled patch must be here in the same or a newer
 * version, or the patch is refused; with ARMLP_ATOMIC_REPLACE, every one must
 * be.  Callbacks find it with klp_get_state(obj->patch, ID) (a kernel
 * patch with klp_get_state(&patch, ID)), and what the patches before left
 * with klp_get_prev_state(ID).
 */
struct armlp_state_rec {
	unsigned long id;
	unsigned int version;
};

#define ARMLP_STATE(id, version)                                               \
	static const struct armlp_state_rec ARMLP__CAT(armlp__state_, __LINE__) \
	__attribute__((section(".armlp.states"), used, aligned(4))) =          \
		{ (id), (version) }

#ifdef __KERNEL__
/* struct klp_object, the shadow variable API (klp_shadow_*): armlp_klp's. */
#include "klp.h"

/*
 * A kernel live patch (`armlp kernel build`): each ARMLP_REPLACE records
 * what is replaced as plain text in .armlp.kfuncs, which the build reads,
 * scans in the release's vmlinux, and turns into the patch module's klp_func
 * table and trampolines; the records themselves are discarded from the module.
 */
struct armlp_kfunc_rec {
	char old_name[128];
	char new_name[128];
	char object[64];
	unsigned long old_sympos;
};

#define ARMLP__DESC(old_name, pos, new)                                        \
	static const struct armlp_kfunc_rec ARMLP__CAT(armlp__rec_, __LINE__)  \
	__attribute__((section(".armlp.kfuncs"), used, aligned(4))) =          \
		{ old_name, #new, "", (pos) };                                 \
	static void *const ARMLP__CAT(armlp__keep_, __LINE__)                  \
	__attribute__((section(".discard.armlp"), used)) = (void *)(new)

/*
 * The vmlinux object's callbacks, as the kernel's struct klp_callbacks (pass
 * NULL for any not wanted); each takes the struct klp_object * and runs at
 * the kernel's point: pre_patch before the functions are hooked (non-zero
 * refuses the patch, nothing changed), post_patch once every task runs the
 * new code, pre_unpatch before the switch back, post_unpatch after it.
 */
struct armlp_kcallbacks_rec {
	char pre_patch[64];
	char post_patch[64];
	char pre_unpatch[64];
	char post_unpatch[64];
};

#define ARMLP_CALLBACKS(pre_patch, post_patch, pre_unpatch, post_unpatch)      \
	static const struct armlp_kcallbacks_rec armlp__callbacks              \
	__attribute__((section(".armlp.kcallbacks"), used, aligned(4))) =      \
		{ #pre_patch, #post_patch, #pre_unpatch, #post_unpatch };      \
	static void *const armlp__keep_callbacks[]                             \
	__attribute__((section(".discard.armlp"), used)) =                     \
		{ (void *)(pre_patch), (void *)(post_patch),                   \
		  (void *)(pre_unpatch), (void *)(post_unpatch) }

/*
 * A kernel symbol that is static or not exported, declared as for programs:
 *   extern unsigned int saved_command_line_len ARMLP_SYMBOL(saved_command_line_len, 0);
 * The build gives it the address the release's vmlinux has for it (the
 * POS-th symbol of that name when there are several); the core checks it
 * against kallsyms at load.
 */
#define ARMLP_SYMBOL(name, pos) __asm__("\".klp.sym.vmlinux." #name "," #pos "\"")

#else /* !__KERNEL__: a program's live patch */
struct armlp_func_desc {
	const char *old_name;     /* function to replace */
	unsigned long old_sympos; /* 0: the name is unique */
	const char *object;       /* NULL: see ARMLP_OBJECT */
	void *new_func;           /* the replacement */
	const char *file;         /* where ARMLP_REPLACE is written, */
	unsigned long line;       /* for ARMLP_OBJECT */
};

/* One descriptor in .armlp.funcs; OLD_NAME is a string. */
#define ARMLP__DESC_IN(object, old_name, pos, new)                             \
	static const struct armlp_func_desc ARMLP__CAT(armlp__desc_, __LINE__) \
	__attribute__((section(".armlp.funcs"), used, aligned(4))) =           \
		{ old_name, (pos), (object), (void *)(new), __FILE__, __LINE__ }
#define ARMLP__DESC(old_name, pos, new) ARMLP__DESC_IN(0, old_name, pos, new)

/*
 * The object the ARMLP_REPLACEs below it (in the same file) change: a shared
 * library by its soname, as the kernel's klp_object names a module:
 *   ARMLP_OBJECT("libz.so.1");
 *   ARMLP_REPLACE(deflate_stored, deflate_stored_fixed);
 *   ARMLP_OBJECT(0);                 // the main program again (the default)
 * ARMLP_REPLACE_IN(OBJECT, old, new) names it for one function.  A library
 * must be loaded when the patch is enabled.
 */
struct armlp_object_rec {
	const char *name;         /* 0: the main program */
	const char *file;
	unsigned long line;
};

#define ARMLP_OBJECT(soname)                                                   \
	static const struct armlp_object_rec ARMLP__CAT(armlp__object_, __LINE__) \
	__attribute__((section(".armlp.objects"), used, aligned(4))) =         \
		{ (soname), __FILE__, __LINE__ }
#define ARMLP_REPLACE_IN(object, old, new) ARMLP__DESC_IN(object, #old, 0, new)
#define ARMLP_REPLACE_POS_IN(object, old, pos, new) ARMLP__DESC_IN(object, #old, pos, new)

/*
 * Callbacks, as the kernel's struct klp_callbacks (NULL for any not wanted):
 *   static int pre_patch(struct klp_object *obj) { ... return 0; }
 *   ARMLP_CALLBACKS(pre_patch, post_patch, pre_unpatch, post_unpatch);
 * armlp calls them in the target, on its own thread, while the program's
 * threads are stopped (a callback must not wait for them): pre_patch before
 * any function is redirected (non-zero refuses the patch, nothing changed),
 * post_patch once all are, pre_unpatch before they go back, post_unpatch
 * after.  obj->name is NULL: the main program (the kernel's vmlinux);
 * obj->patch is this patch, for klp_get_state().
 */
struct klp_patch;
struct klp_object {
	const char *name;
	struct klp_patch *patch;
};

/*
 * System states, the kernel's API (kernel/livepatch/state.c): each
 * ARMLP_STATE of a patch is a struct klp_state with data NULL until a
 * callback sets it.  klp_get_state(obj->patch, ID) is this patch's;
 * klp_get_prev_state(ID), inside a callback, the one the patches enabled
 * before the patch in transition left (the last of them that has ID), NULL
 * if none: a cumulative patch takes over what the one it replaces made.
 * armlp's struct klp_patch has only what these need.
 */
struct klp_state {
	unsigned long id;
	unsigned int version;
	void *data;
};

struct klp_patch {
	struct klp_patch *next;		/* the next enabled patch */
	struct klp_state *states;	/* ends with id 0 */
};

struct klp_state *klp_get_state(struct klp_patch *patch, unsigned long id);
struct klp_state *klp_get_prev_state(unsigned long id);

struct armlp_callbacks_desc {
	int (*pre_patch)(struct klp_object *obj);
	void (*post_patch)(struct klp_object *obj);
	void (*pre_unpatch)(struct klp_object *obj);
	void (*post_unpatch)(struct klp_object *obj);
};

#define ARMLP_CALLBACKS(pre_patch, post_patch, pre_unpatch, post_unpatch)      \
	static const struct armlp_callbacks_desc armlp__callbacks              \
	__attribute__((section(".armlp.callbacks"), used, aligned(4))) =       \
		{ pre_patch, post_patch, pre_unpatch, post_unpatch }

/*
 * Shadow variables, the kernel's API (kernel/livepatch/shadow.c), kept by
 * armlp's runtime in the program: <obj, id> -> size bytes (zeroed, then
 * @ctor), shared by every patch that uses the same id, safe under threads.
 * klp_shadow_alloc returns NULL if <obj, id> exists, the arena (64 KiB) is
 * full or @ctor fails.  Constructors and destructors run under the table's
 * lock: they must not use shadow variables themselves.
 */
typedef unsigned int gfp_t;
#define GFP_KERNEL 0u
#define GFP_ATOMIC 0u
typedef int (*klp_shadow_ctor_t)(void *obj, void *shadow_data, void *ctor_data);
typedef void (*klp_shadow_dtor_t)(void *obj, void *shadow_data);
void *klp_shadow_get(void *obj, unsigned long id);
void *klp_shadow_alloc(void *obj, unsigned long id, unsigned int size, gfp_t gfp_flags,
		       klp_shadow_ctor_t ctor, void *ctor_data);
void *klp_shadow_get_or_alloc(void *obj, unsigned long id, unsigned int size,
			      gfp_t gfp_flags, klp_shadow_ctor_t ctor, void *ctor_data);
void klp_shadow_free(void *obj, unsigned long id, klp_shadow_dtor_t dtor);
void klp_shadow_free_all(unsigned long id, klp_shadow_dtor_t dtor);

/* The build-id of the program this patch was built for (armlp cflags
 * --target PROGRAM defines ARMLP_TARGET_BUILD_ID); armlp refuses to apply
 * the patch to any other program. */
#define ARMLP__STR2(x) #x
#define ARMLP__STR(x) ARMLP__STR2(x)
#ifdef ARMLP_TARGET_BUILD_ID
static const char armlp__target_build_id[]
	__attribute__((section(".armlp.target"), used)) = ARMLP__STR(ARMLP_TARGET_BUILD_ID);
#endif

/* Refer to a static of the patched program: ARMLP_SYMBOL(counter, 2) is the
 * second static named "counter" (kernel .klp.sym naming, main program). */
#define ARMLP_SYMBOL(name, pos) __asm__("\".klp.sym.program." #name "," #pos "\"")

#endif /* __KERNEL__ */

#endif
