#include <stdio.h>
int compute(int);
int total;
int main(void) { for (int i = 0; i < 3; i++) printf("%d %d\n", compute(i), total); return 0; }
