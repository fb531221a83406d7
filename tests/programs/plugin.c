/* A -pg plugin tests/programs/dlopen_host.c loads: plugin_value(4) is 40. */
__attribute__((noinline)) int plugin_value(int x)
{
	return x * 10;
}
