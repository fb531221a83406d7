/* The program of benchmarks/redirect.py: one function per prologue shape
 * whose redirect (old function's first instruction to the new function's
 * first instruction) is counted.  Built twice: -mapcs-frame (rule "apcs")
 * and -mno-apcs-frame (rule "push").
 *
 *   leaf         no locals, no callee-saved registers: the smallest prologue
 *   with_locals  a local array: "sub sp, sp, #N" between the push and the site
 *   saves        values kept in callee-saved registers: a long register list
 *   many_args    six arguments, two of them on the stack
 *   args64       64-bit arguments (register pairs)
 *   varargs_sum  variadic: the prologue pushes r0-r3 first
 *   frame_64k    a 64 KiB frame: several subs from sp
 *   struct_ret   returns a struct through the hidden r0 pointer
 *   new_func     the replacement every redirect enters
 */
#include <stdarg.h>
#include "armlp_fs.h"

volatile int sink;

struct big { int a, b, c, d, e; };

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

FS_NOINLINE int many_args(int a, int b, int c, int d, int e, int f)
{
	return a + 2 * b + 3 * c + 4 * d + 5 * e + 6 * f;
}

FS_NOINLINE long long args64(long long a, int b, long long c)
{
	return a * b + c;
}

FS_NOINLINE int varargs_sum(int n, ...)
{
	va_list ap;
	int s = 0;
	va_start(ap, n);
	for (int i = 0; i < n; i++)
		s += va_arg(ap, int);
	va_end(ap);
	return s;
}

FS_NOINLINE int frame_64k(int n)
{
	volatile char buf[65536];
	buf[n & 0xffff] = (char)n;
	return buf[(n * 7) & 0xffff];
}

FS_NOINLINE struct big struct_ret(int x)
{
	struct big r = { x, x + 1, x + 2, x + 3, x + 4 };
	return r;
}

FS_NOINLINE int new_func(void)
{
	return 0;
}

int main(void)
{
	struct big b = struct_ret(1);
	sink = leaf(1) + with_locals(2) + saves(1, 2, 3, 4) + many_args(1, 2, 3, 4, 5, 6)
	       + (int)args64(1, 2, 3) + varargs_sum(3, 1, 2, 3) + frame_64k(5) + b.e
	       + new_func();
	return 0;
}
