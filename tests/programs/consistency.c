/* Two functions that must agree across a call (the consistency model's
 * test, tests/test_live_consistency.py): roundtrip() encodes, sleeps 20 ms,
 * decodes.  Two workers, each sleeping as long again outside it, count round trips whose result is wrong; after
 * SECONDS (argv[1]) main prints "rounds R mismatches M" and exits 0. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static volatile int rounds, mismatches;

__attribute__((noinline, noipa)) int encode(int v) { return v + 1000; }
__attribute__((noinline, noipa)) int decode(int x) { return x - 1000; }

__attribute__((noinline, noipa)) int roundtrip(int v)
{
	int x = encode(v);
	struct timespec ts = { 0, 20000000 };
	nanosleep(&ts, NULL);
	return decode(x);
}

static void *worker(void *arg)
{
	for (int v = (int)(long)arg;; v++) {
		struct timespec ts = { 0, 20000000 };
		if (roundtrip(v) != v)
			__atomic_add_fetch(&mismatches, 1, __ATOMIC_RELAXED);
		__atomic_add_fetch(&rounds, 1, __ATOMIC_RELAXED);
		nanosleep(&ts, NULL);           /* outside roundtrip half the time */
	}
	return NULL;
}

int main(int argc, char **argv)
{
	int seconds = argc > 1 ? atoi(argv[1]) : 5;
	pthread_t t[2];
	setvbuf(stdout, NULL, _IOLBF, 0);
	for (long i = 0; i < 2; i++)
		pthread_create(&t[i], NULL, worker, (void *)(i * 100000));
	printf("ready\n");
	struct timespec ts = { seconds, 0 };
	nanosleep(&ts, NULL);
	printf("rounds %d mismatches %d\n", rounds, mismatches);
	return 0;
}
