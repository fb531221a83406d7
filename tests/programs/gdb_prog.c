/* A static glibc program for the GDB remote machine tests: -pg functions,
 * a data word to write, output and an exit status to check. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

volatile unsigned int data_word = 0x11223344;

__attribute__((noipa)) int triple(int x) { return 3 * x; }

__attribute__((noipa)) int add3(int a, int b, int c) { return a + 2 * b + 3 * c; }

int main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 5;
	long sum = 0;
	for (int i = 0; i < n; i++)
		sum += triple(i);
	printf("sum %ld add3 %d data %#x\n", sum, add3(1, 2, 3), data_word);
	return 42;
}
