const int limits[2] = {10, 20};
int twice(int x) { return 2 * x; }
__attribute__((noinline)) int over(int v) { return v > limits[1]; }
