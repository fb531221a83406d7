/* A program whose call sequence is known from its source: for i = 0..2,
 * top(i) calls middle(i), which calls leaf(i), then top calls leaf(i). */
#include "armlp_fs.h"

FS_NOINLINE int leaf(int x) { return x + 1; }
FS_NOINLINE int middle(int x) { return leaf(x) * 2; }
FS_NOINLINE int top(int x) { return middle(x) + leaf(x); }

int main(void)
{
	int s = 0;
	for (int i = 0; i < 3; i++)
		s += top(i);
	fs_print("sum ");
	fs_print_int(s);
	fs_print("\n");
	return 0;
}
