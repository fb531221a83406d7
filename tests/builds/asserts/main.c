/* A small program whose functions assert: armlp build's line-number case.
 * Prints "I Q S" for I = 1..N: 100 / I and scale(I). */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>

__attribute__((noinline)) int checked_div(int a, int b)
{
	assert(b != 0);
	return a / b;
}

__attribute__((noinline)) int scale(int x)
{
	assert(x >= 0);
	return x * 3;
}

int main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 3;
	for (int i = 1; i <= n; i++)
		printf("%d %d %d\n", i, checked_div(100, i), scale(i));
	return 0;
}
