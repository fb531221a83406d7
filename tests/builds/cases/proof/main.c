#include <stdio.h>
__attribute__((noinline)) int helper_a(int x) { return x + 1; }
__attribute__((noinline)) int helper_b(int x) { return x + 2; }
__attribute__((noinline)) int compute(int x) { return helper_a(x); }
__attribute__((noinline)) void show(int v) { printf("v=%d\n", v); }
int main(void) { show(compute(10)); return 0; }
