/* A Thumb-2 program with one function whose prologue armlp cannot undo: it
   sets r3 (movw) before its mcount call, which no compiler prologue does. */
#include <stdio.h>

__asm__(
	"	.syntax	unified\n"
	"	.thumb\n"
	"	.text\n"
	"	.globl	odd_prologue\n"
	"	.type	odd_prologue, %function\n"
	"	.thumb_func\n"
	"odd_prologue:\n"
	"	push	{r3, lr}\n"
	"	movw	r3, #0\n"
	"	push	{lr}\n"
	"	bl	__gnu_mcount_nc\n"
	"	movs	r0, #7\n"
	"	pop	{r3, pc}\n"
	"	.size	odd_prologue, . - odd_prologue\n");

int odd_prologue(void);

int main(void)
{
	printf("%d\n", odd_prologue());
	return 0;
}
