const int limits[2] = {10, 20};
int twice(int x) { return 2 * x; }
