/* Thumb-2 prologues as Debian armhf's gcc writes them with -pg: push.w
 * with locals, a bare leaf, and vpush of a callee-saved VFP register. */
int g(int);

int frame_and_locals(int a, int b)
{
	int x[8];
	for (int i = 0; i < 8; i++)
		x[i] = g(a + i);
	return x[b & 7] + a;
}

int bare_leaf(int a)
{
	return a * 3;
}

double keeps_d8(double a, double b)
{
	return g((int)a) * b;
}
