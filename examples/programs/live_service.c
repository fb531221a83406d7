/* The live demo service (glibc, pthreads): four worker threads price
 * orders; the main thread prints a summary line every 200 ms until it has
 * printed COUNT lines (argv[1], default 25).  The bug: price() forgets the
 * 10% discount for orders of 10 items or more. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define WORKERS 4

static int discount_percent __attribute__((used)) = 10;
static volatile int last_price[WORKERS];
static volatile unsigned long calls[WORKERS];

__attribute__((noinline, noipa)) int unit_price(int item) { return 100 + item % 7; }

__attribute__((noinline, noipa)) int price(int items)
{
	return items * unit_price(items);       /* BUG: no discount */
}

static void *worker(void *arg)
{
	int id = (int)(long)arg;
	for (;;) {
		last_price[id] = price(10 + id % 3);
		calls[id]++;
		struct timespec ts = { 0, 1000000 };    /* 1 ms */
		nanosleep(&ts, NULL);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	int count = argc > 1 ? atoi(argv[1]) : 25;
	pthread_t t[WORKERS];
	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("orders of 10+ items get %d%% off\n", discount_percent);
	for (long i = 0; i < WORKERS; i++)
		pthread_create(&t[i], NULL, worker, (void *)i);
	for (int line = 0; line < count; line++) {
		struct timespec ts = { 0, 200000000 };  /* 200 ms */
		nanosleep(&ts, NULL);
		printf("line %d: price(10) = %d, price(11) = %d, price(12) = %d\n", line,
		       last_price[0], last_price[1], last_price[2]);
	}
	return 0;
}
