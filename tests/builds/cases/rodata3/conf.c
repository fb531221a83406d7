extern const int scale[2];
const int limits[2] = {10, 20};
__attribute__((noinline)) int over(int v) { return v * scale[0] > limits[1]; }
