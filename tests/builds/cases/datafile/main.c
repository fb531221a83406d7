#include <stdio.h>
extern int threshold;
extern const char *const greeting;
__attribute__((noinline)) void show(int v)
{
	printf("%s %d\n", greeting, v > threshold ? threshold : v);
}
int main(int argc, char **argv)
{
	show(50);
	return 0;
}
