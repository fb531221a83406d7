/* Loads the plugin argv[1] with dlopen, calls plugin_value(4) and unloads
 * it, argv[2] times, argv[3] microseconds apart: "round R value V" each
 * time, then "done". */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc < 4) {
		fprintf(stderr, "usage: dlopen_host PLUGIN ROUNDS PAUSE_US\n");
		return 2;
	}
	int rounds = atoi(argv[2]);
	useconds_t pause = (useconds_t)atoi(argv[3]);
	for (int r = 0; r < rounds; r++) {
		void *h = dlopen(argv[1], RTLD_NOW);
		if (!h) {
			printf("dlopen: %s\n", dlerror());
			return 1;
		}
		int (*f)(int) = (int (*)(int))dlsym(h, "plugin_value");
		printf("round %d value %d\n", r, f(4));
		fflush(stdout);
		dlclose(h);
		usleep(pause);
	}
	printf("done\n");
	return 0;
}
