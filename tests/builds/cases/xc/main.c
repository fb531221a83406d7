#include <stdio.h>
int compute(int); int lookup(int);
int main(void) { for (int i = 0; i < 3; i++) printf("%d %d\n", compute(i), lookup(i)); return 0; }
