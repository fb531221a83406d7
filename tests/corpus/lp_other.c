/* A second static helper(), so the name needs a sympos. */
#define KEEP __attribute__((noinline, noipa))
static KEEP int helper(int x) { return x * 3; }
KEEP int use_helper2(int x) { return helper(x); }
