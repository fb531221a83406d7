/* Hard-float (armhf) arguments in s0-s15/d0-d7, built -marm: its libc is
 * Thumb-2, so the mcount sites are ARM blx calls.  For verify (tests/test_verify.py). */
#include <stdio.h>
__attribute__((noinline, noipa)) double mix(double a, float b, int c, double d) { return a * b + c - d; }
__attribute__((noinline, noipa)) float scale(float x, float y, float z, float w, double e) { return x + y * z - w + (float)e; }
int main(void) { printf("%.3f %.3f\n", mix(1.5, 2.0f, 3, 0.25), scale(1, 2, 3, 4, 5)); return 0; }
