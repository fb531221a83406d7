/* A small glibc program for the live tests (tests/test_live.py): a worker
 * thread calls price() (traced: patchable) and untraced() (no mcount site:
 * not patchable) in a loop; the main thread prints a line every PERIOD ms
 * (argv[2], default 100) until it has printed COUNT lines (argv[1], default
 * 10), then "done", and exits with STATUS (argv[3], default 0). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static volatile int last_price, last_untraced;

__attribute__((noinline, noipa)) int price(int items)
{
	return items * 100;
}

__attribute__((noinline, noipa, no_instrument_function)) int untraced(int x)
{
	return x * 2;
}

static void *worker(void *arg)
{
	(void)arg;
	for (;;) {
		last_price = price(10);
		last_untraced = untraced(5);
		struct timespec ts = { 0, 1000000 };    /* 1 ms */
		nanosleep(&ts, NULL);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	int count = argc > 1 ? atoi(argv[1]) : 10;
	long period = argc > 2 ? atol(argv[2]) : 100;
	int status = argc > 3 ? atoi(argv[3]) : 0;
	pthread_t t;
	setvbuf(stdout, NULL, _IOLBF, 0);
	pthread_create(&t, NULL, worker, NULL);
	for (int line = 0; line < count; line++) {
		struct timespec ts = { period / 1000, (period % 1000) * 1000000 };
		nanosleep(&ts, NULL);
		printf("line %d: price=%d untraced=%d\n", line, last_price, last_untraced);
	}
	printf("done\n");
	return status;
}
