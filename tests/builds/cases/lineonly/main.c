#include <stdio.h>
#include <stdlib.h>
/* filler */
/* filler */
/* filler */
/* filler */
/* filler */
/* filler */
/* filler */
/* filler */
/* filler */
/* filler */
/* filler */
/* filler */
/* filler */
/* filler */
/* filler */
/* filler */
/* filler */
/* filler */
/* filler */
/* filler */
__attribute__((noinline)) int limit(int x)
{
	return x > 10 ? 10 : x;
}
__attribute__((noinline)) void show(int v)
{
	printf("%d\n", v);
}
int main(int argc, char **argv)
{
	show(limit(argc > 1 ? atoi(argv[1]) : 50));
	return 0;
}
