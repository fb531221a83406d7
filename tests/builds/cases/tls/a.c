__thread int tcount = 5;
static __thread int tlocal;
__attribute__((noinline)) int compute(int x) { tlocal += x; tcount++; return x * 2 + tlocal; }
