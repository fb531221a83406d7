#include <stdio.h>
int x_calc(int), y_calc(int), x_other(int);
int main(void) { printf("%d %d %d\n", x_calc(1), y_calc(1), x_other(1)); return 0; }
