/* A second patch sharing shadow id 1 with shadow.c: leaf(x) = 1000 + the
 * count the first patch kept for x (without counting). */
#include <armlp/livepatch.h>
ARMLP_PATCH("shadow2");
int leaf_shadow2(int x)
{
	int *n = klp_shadow_get((void *)x, 1);
	return 1000 + (n ? *n : 0);
}
ARMLP_REPLACE(leaf, leaf_shadow2);
