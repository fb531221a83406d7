int total;
__attribute__((noinline)) int compute(int x) { total += x; return x * 2; }
