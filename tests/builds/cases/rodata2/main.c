#include <stdio.h>
extern const int limits[2];
int twice(int x);
int over(int v);
__attribute__((noinline)) void show(int v)
{
	printf("%d %d\n", twice(v > limits[0] ? limits[0] : v), over(v));
}
int main(int argc, char **argv)
{
	show(50);
	show(15);
	return 0;
}
