#include <stdio.h>
int compute(int);
__attribute__((noinline)) int twice(int x) { return 2 * x; }
int main(void) { for (int i = 0; i < 3; i++) printf("%d\n", twice(compute(i))); return 0; }
