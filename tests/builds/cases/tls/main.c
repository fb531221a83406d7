#include <stdio.h>
int compute(int);
extern __thread int tcount;
int main(void) { for (int i = 0; i < 3; i++) printf("%d %d\n", compute(i), tcount); return 0; }
