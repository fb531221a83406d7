/* GCC clones: scaled() is only called with k = 3, so -O2 builds scaled.constprop.0
 * and no scaled; armlp build must patch the clone by its own name. */
#include <stdio.h>
#include <stdlib.h>

struct buf { int n; int v[64]; };

static int __attribute__((noinline)) scaled(int x, int k)
{
	int s = 0;
	for (int i = 0; i < x; i++)
		s += i * k + (s >> 3);
	return s;
}

static int sum(struct buf *b)
{
	if (!b || b->n <= 0)
		return 0;
	int s = 0;
	for (int i = 0; i < b->n; i++)
		s += b->v[i] * (i + 1) + (s >> 5);
	for (int i = 0; i < b->n; i++)
		s ^= b->v[(i * 7) % b->n] << (i & 3);
	return s;
}

int __attribute__((noinline)) checked(int x)
{
	if (__builtin_expect(x < 0, 0)) {
		fprintf(stderr, "negative %d\n", x);
		abort();
	}
	return x * 2 + 1;
}

/* Built without an mcount call: not patchable. */
int __attribute__((noinline, no_instrument_function)) untraced(int x)
{
	return x + 7;
}

int __attribute__((noinline)) use1(struct buf *b) { return sum(b) + 1; }
int __attribute__((noinline)) use2(struct buf *b) { return sum(b) * 3; }
int __attribute__((noinline)) use3(struct buf *b) { return sum(b) ^ 5; }

int main(int argc, char **argv)
{
	struct buf b = { 10 };
	for (int i = 0; i < 10; i++)
		b.v[i] = i + argc;
	printf("%d %d %d %d\n", untraced(argc), scaled(argc + 5, 3), use1(&b) + use2(argc > 5 ? NULL : &b) + use3(&b), checked(argc));
	return 0;
}
