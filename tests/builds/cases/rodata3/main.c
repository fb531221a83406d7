#include <stdio.h>
extern const int limits[2];
int over(int v);
const int scale[2] = {2, 3};
__attribute__((noinline)) void show(int v)
{
	printf("%d %d\n", (v > limits[0] ? limits[0] : v) * scale[1], over(v));
}
int main(int argc, char **argv)
{
	show(50);
	show(9);
	return 0;
}
