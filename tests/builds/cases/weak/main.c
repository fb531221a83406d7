#include <stdio.h>
__attribute__((noinline)) int real_impl(int x) { return x * 10; }
__attribute__((noinline)) int hook(int x) { return real_impl(x); }
int main(void) { printf("%d\n", hook(4)); return 0; }
