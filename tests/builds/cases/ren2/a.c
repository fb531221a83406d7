/* a longer comment so that git sees a rename
   line 2
   line 3
   line 4
   line 5
*/
int unused1(int x) { return x + 11; }
int unused2(int x) { return x + 12; }
int unused3(int x) { return x + 13; }
__attribute__((noinline)) int compute(int x) { return x * 2; }
