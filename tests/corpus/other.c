/* The second file with a static function named like one in funcs.c. */
#define KEEP __attribute__((noinline, noipa))

extern volatile int sink;

/* Deliberately bigger than funcs.c's dup_static so the two can be told apart. */
static KEEP int dup_static(int x)
{
    sink = x;
    sink = x * x;
    return (x - 7) ^ sink;
}

KEEP int call_dup_b(int x) { return dup_static(x) * 2; }
