/* A thread interrupted by a signal inside a patched function
 * (tests/test_live_thumb.py): the worker spends nearly all its time in
 * work(); main sends it SIGUSR1, whose handler sleeps HOLD ms (argv[1]) in
 * nanosleep, so the worker's stack holds a signal frame whose saved pc is in
 * work() while it blocks in a system call.  Prints "held" when the handler
 * starts and "released" when it returns; the worker then waits outside
 * work() for 3 s, calls it once more and main prints that result
 * ("result N") and "done".
 *
 * Built with -pg in one step, it is also linked with gprof's start-up: a
 * SIGPROF timer at 100 Hz, which cuts any sleep short (EINTR).  Every
 * sleep here goes on for what remains, or the handler would return early
 * and the program end before the test looked. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static volatile int stop, held, released;
static volatile long result;
static long hold_ms = 3000;

__attribute__((noinline, noipa)) long work(long n)
{
	volatile long s = 0;
	for (long i = 0; i < n; i++)
		s += i & 7;
	return s;
}

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000 };
	while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
		;
}

static void handler(int sig)
{
	int saved = errno;
	(void)sig;
	held = 1;
	sleep_ms(hold_ms);
	released = 1;
	errno = saved;
}

static void *worker(void *arg)
{
	(void)arg;
	while (!released)
		result = work(1L << 22);
	while (!stop)
		sleep_ms(1);
	result = work(1000);
	return NULL;
}

int main(int argc, char **argv)
{
	pthread_t t;
	if (argc > 1)
		hold_ms = atol(argv[1]);
	setvbuf(stdout, NULL, _IOLBF, 0);
	signal(SIGUSR1, handler);
	pthread_create(&t, NULL, worker, NULL);
	sleep_ms(300);
	pthread_kill(t, SIGUSR1);
	while (!held)
		sleep_ms(1);
	printf("held\n");
	while (!released)
		sleep_ms(1);
	printf("released\n");
	sleep_ms(3000);
	stop = 1;
	pthread_join(t, NULL);
	printf("result %ld\ndone\n", result);
	return 0;
}
