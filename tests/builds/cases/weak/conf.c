__attribute__((noinline)) int default_impl(int x) { return x + 1; }
__attribute__((weak, noinline)) int hook(int x) { return default_impl(x); }
