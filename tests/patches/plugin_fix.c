/* For tests/programs/plugin.c, loaded by dlopen_host.c: plugin_value(4)
 * becomes 41 (from 40). */
#include <armlp/livepatch.h>
ARMLP_PATCH("plugin-fix");
ARMLP_OBJECT("libplugin.so");
int plugin_value_v2(int x)
{
	return x * 10 + 1;
}
ARMLP_REPLACE(plugin_value, plugin_value_v2);
