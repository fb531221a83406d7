#include <stdio.h>
int compute(int);
int main(void) { for (int i = 0; i < 3; i++) printf("%d\n", compute(i)); return 0; }
