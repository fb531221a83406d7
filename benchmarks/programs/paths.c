/* The program of benchmarks/ftrace.py: functions of different prologue
 * shapes whose mcount sites are measured on each ftrace path.  Built twice:
 * -mapcs-frame (rule "apcs") and -mno-apcs-frame (rule "push").
 *
 *   leaf        no locals, no callee-saved registers: the smallest prologue
 *   with_locals a local array: "sub sp, sp, #N" between the push and the site
 *   saves       keeps values in callee-saved registers across a call: a long
 *               register list in the push
 *   new_leaf    the replacement a redirect enters (same signature as leaf)
 */
#include "armlp_fs.h"

volatile int sink;

FS_NOINLINE int leaf(int x)
{
	return x + 1;
}

FS_NOINLINE int with_locals(int n)
{
	volatile int buf[16];
	for (int i = 0; i < 16; i++)
		buf[i] = n + i;
	return buf[n & 15];
}

FS_NOINLINE int saves(int a, int b, int c, int d)
{
	int x = a * b, y = c * d, z = a ^ d, w = b - c;
	sink = x;
	return x + y * leaf(z) + w * leaf(y) + z * w;
}

FS_NOINLINE int new_leaf(int x)
{
	return x + 2;
}

int main(void)
{
	sink = leaf(1) + with_locals(2) + saves(1, 2, 3, 4) + new_leaf(3);
	return 0;
}
