#include <stdio.h>
extern const int limits[2];
int twice(int x);
__attribute__((noinline)) void show(int v)
{
	printf("%d\n", twice(v > limits[0] ? limits[0] : v));
}
int main(int argc, char **argv)
{
	show(50);
	return 0;
}
