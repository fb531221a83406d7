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
int threshold = 10;
__attribute__((noinline)) int limit(int x)
{
	return x > threshold ? threshold : x;
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
