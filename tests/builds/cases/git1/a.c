__attribute__((noinline)) int compute(int x) { return x * 2; }
