/* The target of tests/test_freeze.py: NTHREADS workers increment their own
 * counter in a tight loop until the test sets stop_flag through
 * /proc/PID/mem.  Each worker publishes its (host) tid, so the test can keep
 * one running while it freezes the rest.  SIGUSR1s are counted, so the test
 * can check that a signal arriving around a freeze is not lost.  Exits 7
 * when stopped by the flag, 1 if the test never set it (safety timeout). */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define NTHREADS 8

volatile int stop_flag;
volatile int ready;
volatile int usr1_count;
volatile unsigned long counters[NTHREADS];
volatile int tids[NTHREADS];

static void on_usr1(int sig)
{
	(void)sig;
	usr1_count++;
}

static void *worker(void *arg)
{
	int i = (int)(long)arg;
	tids[i] = (int)syscall(SYS_gettid);
	while (!stop_flag)
		counters[i]++;
	return NULL;
}

int main(void)
{
	struct sigaction sa = {0};
	sa.sa_handler = on_usr1;
	sa.sa_flags = SA_RESTART;
	sigaction(SIGUSR1, &sa, NULL);

	pthread_t t[NTHREADS];
	for (int i = 0; i < NTHREADS; i++)
		pthread_create(&t[i], NULL, worker, (void *)(long)i);
	ready = 1;
	time_t start = time(NULL);
	while (!stop_flag && time(NULL) - start < 60) {
		struct timespec ts = {0, 5 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	int by_flag = stop_flag;
	stop_flag = 1;
	for (int i = 0; i < NTHREADS; i++)
		pthread_join(t[i], NULL);
	printf("done usr1 %d\n", usr1_count);
	return by_flag ? 7 : 1;
}
