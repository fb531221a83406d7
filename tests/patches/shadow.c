/* Shadow variables in a program: the new leaf(x) counts its calls per x in
 * <x, 1>; use_helper(n) runs the API's cases and returns one bit per check. */
#include <armlp/livepatch.h>
ARMLP_PATCH("shadow");

static int zero_ctor(void *obj, void *data, void *arg) { *(int *)data = *(int *)arg; return 0; }
static int refuse_ctor(void *obj, void *data, void *arg) { return -1; }
static int dtor_calls;
static void count_dtor(void *obj, void *data) { dtor_calls += *(int *)data; }

int leaf_shadow(int x)
{
	int zero = 0;
	int *n = klp_shadow_get_or_alloc((void *)x, 1, sizeof(int), GFP_KERNEL, zero_ctor, &zero);
	return n ? ++*n : -1;
}
ARMLP_REPLACE(leaf, leaf_shadow);

int use_helper_shadow(int n)
{
	int seven = 7, eight = 8, bits = 0;
	int *a = klp_shadow_alloc(&seven, 2, sizeof(int), GFP_KERNEL, zero_ctor, &seven);
	int *b = klp_shadow_alloc(&eight, 2, sizeof(int), GFP_KERNEL, zero_ctor, &eight);
	bits |= (a && *a == 7) << 0;
	bits |= (b && *b == 8) << 1;
	bits |= (klp_shadow_get(&seven, 2) == a) << 2;
	bits |= (klp_shadow_alloc(&seven, 2, 4, GFP_KERNEL, zero_ctor, &eight) == 0) << 3;
	bits |= (klp_shadow_get_or_alloc(&seven, 2, 4, GFP_KERNEL, zero_ctor, &eight) == a) << 4;
	bits |= (klp_shadow_alloc(&n, 3, 4, GFP_KERNEL, refuse_ctor, 0) == 0) << 5;
	bits |= (klp_shadow_get(&n, 3) == 0) << 6;
	klp_shadow_free(&seven, 2, count_dtor);
	bits |= (klp_shadow_get(&seven, 2) == 0 && klp_shadow_get(&eight, 2) == b) << 7;
	klp_shadow_free_all(2, count_dtor);
	bits |= (klp_shadow_get(&eight, 2) == 0 && dtor_calls == 15) << 8;
	for (int i = 0; i < 100; i++)       /* freed space is reused: no exhaustion */
		klp_shadow_free(&n, 4, 0), bits &= klp_shadow_alloc(&n, 4, 2000, 0, 0, 0) ? ~0 : ~(1 << 9);
	bits |= 1 << 9;
	return bits;
}
ARMLP_REPLACE(use_helper, use_helper_shadow);
