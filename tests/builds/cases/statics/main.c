#include <stdio.h>
#include <unistd.h>

__attribute__((noinline)) int count_a(void)
{
	static int calls;
	return ++calls;
}

__attribute__((noinline)) int count_b(void)
{
	static int calls;
	return calls += 10;
}

int main(int argc, char **argv)
{
	for (int i = 0; i < 6; i++) {
		printf("%d %d\n", count_a(), count_b());
		fflush(stdout);
		sleep(1);
	}
	return 0;
}
