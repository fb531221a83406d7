/* Busy threads for the consistency model (tests/test_live_busy.py): none
 * ever makes a system call, so under qemu-user none has exact registers.
 * Eight workers spin in spin() (never patched) and call tick() between
 * spins; with argv[2] "stuck", one more thread loops for ever inside
 * forever() (patched too).  Runs argv[1] seconds (or until the file named
 * by argv[3] exists, benchmarks/transition.py), then prints the number of
 * tick() calls that returned the new value and of those that returned
 * neither value, and exits 0. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define WORKERS 8

static volatile int stop;
static volatile unsigned long fresh[WORKERS], bad[WORKERS];

__attribute__((noinline, noipa)) int tick(int x) { return x + 1; }      /* new: x + 2 */

__attribute__((noinline, noipa)) unsigned spin(unsigned h)
{
	for (int i = 0; i < 1000; i++)
		h = h * 33 + (unsigned)i;
	return h;
}

__attribute__((noinline, noipa)) void forever(volatile unsigned *h)
{
	while (!stop)
		*h = *h * 33 + 1;
}

static void *worker(void *arg)
{
	int id = (int)(long)arg;
	unsigned h = 0;
	while (!stop) {
		h = spin(h);
		int r = tick(id);
		if (r == id + 2)
			fresh[id]++;
		else if (r != id + 1)
			bad[id]++;
	}
	return (void *)(long)h;
}

static void *stuck(void *arg)
{
	volatile unsigned h = 0;
	(void)arg;
	forever(&h);
	return NULL;
}

int main(int argc, char **argv)
{
	pthread_t t[WORKERS + 1];
	int n = WORKERS;
	for (long i = 0; i < WORKERS; i++)
		pthread_create(&t[i], NULL, worker, (void *)i);
	if (argc > 2 && strcmp(argv[2], "stuck") == 0)
		pthread_create(&t[n++], NULL, stuck, NULL);
	printf("ready\n");
	fflush(stdout);
	int ticks = 50 * (argc > 1 ? atoi(argv[1]) : 5);
	for (int i = 0; i < ticks && !(argc > 3 && access(argv[3], F_OK) == 0); i++) {
		struct timespec ts = { 0, 20000000 };
		nanosleep(&ts, NULL);
	}
	stop = 1;
	unsigned long total = 0, wrong = 0;
	for (int i = 0; i < n; i++)
		pthread_join(t[i], NULL);
	for (int i = 0; i < WORKERS; i++) {
		total += fresh[i];
		wrong += bad[i];
	}
	printf("fresh %lu bad %lu\n", total, wrong);
	return 0;
}
