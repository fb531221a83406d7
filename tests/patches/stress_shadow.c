/* Eight threads allocate and look up shadow variables at once: the new f(x)
 * attaches <x & 255, 9> (one per object, whichever thread comes first) and
 * answers x + 1001 only if every thread gets the same data for an object. */
#include <armlp/livepatch.h>
ARMLP_PATCH("stress-shadow");
static int stamp(void *obj, void *data, void *arg) { *(int *)data = (int)obj; return 0; }
int f_shadow(int x)
{
	void *obj = (void *)(x & 255);
	int *d = klp_shadow_get_or_alloc(obj, 9, sizeof(int), GFP_KERNEL, stamp, 0);
	return d && *d == (int)obj && klp_shadow_get(obj, 9) == d ? x + 1001 : -1;
}
ARMLP_REPLACE(f, f_shadow);
