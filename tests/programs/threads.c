/* A pthreads program for the GDB remote machine tests: four workers spin
 * until the test (or the timeout in main) sets stop_flag. */
#include <pthread.h>
#include <stdio.h>
#include <time.h>

#define NTHREADS 4

volatile int stop_flag;
volatile unsigned long counters[NTHREADS];

__attribute__((noipa)) void work(int i) { counters[i]++; }

static void *worker(void *arg)
{
	int i = (int)(long)arg;
	while (!stop_flag)
		work(i);
	return NULL;
}

int main(void)
{
	pthread_t t[NTHREADS];
	for (int i = 0; i < NTHREADS; i++)
		pthread_create(&t[i], NULL, worker, (void *)(long)i);
	time_t start = time(NULL);
	while (!stop_flag && time(NULL) - start < 20) {
		struct timespec ts = {0, 10 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	stop_flag = 1;
	for (int i = 0; i < NTHREADS; i++)
		pthread_join(t[i], NULL);
	printf("threads done\n");
	return 3;
}
