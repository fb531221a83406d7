/* Part of the tree, not of the program. */
int unused(int x)
{
	return x + 1;
}
