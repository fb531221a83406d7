__attribute__((noinline)) static int helper(int v) { return v + 100; }
int y_calc(int v) { return helper(v) * 3; }
