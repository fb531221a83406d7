__attribute__((noinline)) static int helper(int v) { return v + 1; }
int x_calc(int v) { return helper(v) * 2; }
int x_other(int v) { return helper(v) * 7; }
