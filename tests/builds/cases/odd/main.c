#include <stdio.h>
#include <stdlib.h>

static char a = 'A';
static char tag[6] __attribute__((aligned(1))) = "hello";

__attribute__((noinline)) void show(int v)
{
	printf("%d %c %s\n", v, a, tag);
}

int main(int argc, char **argv)
{
	show(argc);
	return 0;
}
