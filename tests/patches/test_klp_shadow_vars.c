/* The kernel selftests' test_klp_shadow_vars for a program
 * (tests/test_selftests.py): the same calls of the shadow variable API, in
 * the same order, each echoed with pointers numbered by first appearance
 * (PTR0 is NULL), so the log can be compared with the kernel's.  The kernel
 * runs them from the module's init; here the pre_patch callback does, and
 * returns what init would.  Pointers are 4 bytes: size=4 where the kernel's
 * 64-bit log says 8. */
#include <stdarg.h>
#include <armlp/livepatch.h>

ARMLP_PATCH("test_klp_shadow_vars");

extern void fs_print(const char *s);

/* Numbers for pointers, as the kernel's ptr_id() (a table here: nothing in
 * a patch of a freestanding program allocates). */
static void *ptrs[32];
static int nptrs;

static int ptr_id(const void *ptr)
{
	for (int i = 0; i < nptrs; i++)
		if (ptrs[i] == ptr)
			return i;
	if (nptrs == 32)
		return -12;
	ptrs[nptrs] = (void *)ptr;
	return nptrs++;
}

/* pr_info with "test_klp_shadow_vars: " and %d, %x (unsigned long), %s. */
static void pr_info(const char *fmt, ...)
{
	static const char prefix[] = "test_klp_shadow_vars: ";
	char line[160], num[12];
	unsigned int n = 0;
	va_list ap;

	for (const char *p = prefix; *p; p++)
		line[n++] = *p;
	va_start(ap, fmt);
	for (const char *p = fmt; *p && n < sizeof(line) - 13; p++) {
		unsigned long v, base = 10;
		const char *s;
		char *q = num + sizeof(num) - 1;

		if (*p != '%') {
			line[n++] = *p;
			continue;
		}
		switch (*++p) {
		case 's':
			for (s = va_arg(ap, const char *); *s && n < sizeof(line) - 13; s++)
				line[n++] = *s;
			continue;
		case 'x':
			base = 16;
			v = va_arg(ap, unsigned long);
			break;
		default:		/* 'd' */
			v = (unsigned long)va_arg(ap, int);
			break;
		}
		*q = 0;
		if (base == 16)		/* constant divisors: no libgcc division */
			do
				*--q = "0123456789abcdef"[v & 15];
			while (v >>= 4);
		else
			do
				*--q = (char)('0' + v % 10);
			while (v /= 10);
		while (*q)
			line[n++] = *q++;
	}
	va_end(ap);
	line[n++] = '\n';
	line[n] = 0;
	fs_print(line);
}

/* The wrappers echo each call and its result; every ptr_id() is taken in
 * one order (result, data, constructor, object) so the numbers are the
 * kernel's. */
static void *shadow_get(void *obj, unsigned long id)
{
	void *ret = klp_shadow_get(obj, id);
	int r = ptr_id(ret);

	pr_info("klp_%s(obj=PTR%d, id=0x%x) = PTR%d", __func__, ptr_id(obj), id, r);
	return ret;
}

static void echo_alloc(const char *func, void *obj, unsigned long id, unsigned int size,
		       klp_shadow_ctor_t ctor, void *ctor_data, void *ret)
{
	int r = ptr_id(ret), d = ptr_id(ctor_data), c = ptr_id((void *)ctor);

	pr_info("klp_%s(obj=PTR%d, id=0x%x, size=%x, gfp_flags=GFP_KERNEL), ctor=PTR%d, "
		"ctor_data=PTR%d = PTR%d", func, ptr_id(obj), id, (unsigned long)size, c, d, r);
}

static void *shadow_alloc(void *obj, unsigned long id, unsigned int size,
			  klp_shadow_ctor_t ctor, void *ctor_data)
{
	void *ret = klp_shadow_alloc(obj, id, size, GFP_KERNEL, ctor, ctor_data);

	echo_alloc(__func__, obj, id, size, ctor, ctor_data, ret);
	return ret;
}

static void *shadow_get_or_alloc(void *obj, unsigned long id, unsigned int size,
				 klp_shadow_ctor_t ctor, void *ctor_data)
{
	void *ret = klp_shadow_get_or_alloc(obj, id, size, GFP_KERNEL, ctor, ctor_data);

	echo_alloc(__func__, obj, id, size, ctor, ctor_data, ret);
	return ret;
}

static void shadow_free(void *obj, unsigned long id, klp_shadow_dtor_t dtor)
{
	int d;

	klp_shadow_free(obj, id, dtor);
	d = ptr_id((void *)dtor);
	pr_info("klp_%s(obj=PTR%d, id=0x%x, dtor=PTR%d)", __func__, ptr_id(obj), id, d);
}

static void shadow_free_all(unsigned long id, klp_shadow_dtor_t dtor)
{
	klp_shadow_free_all(id, dtor);
	pr_info("klp_%s(id=0x%x, dtor=PTR%d)", __func__, id, ptr_id((void *)dtor));
}

/* Shadow variable constructor: remember simple pointer data. */
static int shadow_ctor(void *obj, void *shadow_data, void *ctor_data)
{
	int **sv = shadow_data;
	int d = ptr_id(ctor_data);

	(void)obj;
	*sv = ctor_data;
	pr_info("%s: PTR%d -> PTR%d", __func__, ptr_id(sv), d);
	return 0;
}

static void shadow_dtor(void *obj, void *shadow_data)
{
	int o = ptr_id(obj);

	pr_info("%s(obj=PTR%d, shadow_data=PTR%d)", __func__, o, ptr_id(shadow_data));
}

/* The check after each lookup: the shadow variable found, holding its data. */
static void got_expected(void *ret, int **sv, int *var)
{
	if (ret == sv && *sv == var)
		pr_info("  got expected PTR%d -> PTR%d result", ptr_id(sv), ptr_id(*sv));
}

#define NUM_OBJS 3

static int objs[NUM_OBJS];

/* The kernel's test_shadow_vars_init(), call for call. */
static int test_shadow_vars(void)
{
	const unsigned long id = 0x1234;
	const unsigned int size = sizeof(int *);
	static int var1[NUM_OBJS], var2[NUM_OBJS];
	int **sv1[NUM_OBJS], **sv2[NUM_OBJS];
	void *ret;
	int i;

	ptr_id(0);

	/* With an empty shadow variable hash table, expect not to find any matches. */
	ret = shadow_get(&objs[0], id);
	if (!ret)
		pr_info("  got expected NULL result");

	/* Allocate a few shadow variables with different <obj> and <id>. */
	for (i = 0; i < NUM_OBJS; i++) {
		void *obj = &objs[i];

		if (i % 2)
			sv1[i] = shadow_alloc(obj, id, size, shadow_ctor, &var1[i]);
		else
			sv1[i] = shadow_get_or_alloc(obj, id, size, shadow_ctor, &var1[i]);
		if (!sv1[i])
			return -12;
		sv2[i] = shadow_alloc(obj, id + 1, size, shadow_ctor, &var2[i]);
		if (!sv2[i])
			return -12;
	}

	/* Verify we can find our new shadow variables and that they point to expected data. */
	for (i = 0; i < NUM_OBJS; i++) {
		ret = shadow_get(&objs[i], id);
		if (!ret)
			return -22;
		got_expected(ret, sv1[i], &var1[i]);
		ret = shadow_get(&objs[i], id + 1);
		if (!ret)
			return -22;
		got_expected(ret, sv2[i], &var2[i]);
	}

	/* Allocate or get a few more, this time with the same <obj>, <id>:
	 * the existing shadow variable comes back. */
	for (i = 0; i < NUM_OBJS; i++) {
		ret = shadow_get_or_alloc(&objs[i], id, size, shadow_ctor, &var1[i]);
		if (!ret)
			return -22;
		got_expected(ret, sv1[i], &var1[i]);
	}

	/* Free the <obj=*, id> shadow variables and check that we can no longer find them. */
	for (i = 0; i < NUM_OBJS; i++) {
		shadow_free(&objs[i], id, shadow_dtor);
		ret = shadow_get(&objs[i], id);
		if (!ret)
			pr_info("  got expected NULL result");
	}

	/* We should still find an <id+1> variable. */
	for (i = 0; i < NUM_OBJS; i++) {
		ret = shadow_get(&objs[i], id + 1);
		if (!ret)
			return -22;
		got_expected(ret, sv2[i], &var2[i]);
	}

	/* Free all the <id+1> variables, too. */
	shadow_free_all(id + 1, 0);
	for (i = 0; i < NUM_OBJS; i++) {
		ret = shadow_get(&objs[i], id + 1);
		if (!ret)
			pr_info("  got expected NULL result");
	}
	return 0;
}

static int pre_patch(struct klp_object *obj)
{
	(void)obj;
	return test_shadow_vars();
}

ARMLP_CALLBACKS(pre_patch, 0, 0, 0);
