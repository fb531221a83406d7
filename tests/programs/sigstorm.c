/* Threads that take signals of their own all the time (issue 9, item 2):
 * four workers each send themselves SIGUSR1 every millisecond with
 * pthread_kill and call price() in between, for argv[1] seconds (default
 * 3); the main thread prints "ready" first.  At the end it prints "sent N
 * got M", where M counts the handler's runs, and exits 0 when every signal
 * arrived (1 otherwise).  Under qemu-user 7.2 every one of these signals
 * passes through the GDB stub if armlp lets it (tests/test_live_signals.py). */
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static atomic_long got;
static int seconds = 3;

static void on_usr1(int sig) { (void)sig; atomic_fetch_add(&got, 1); }

__attribute__((noinline, noipa)) int price(int items) { return items * 100; }

static void *worker(void *arg)
{
	long sent = 0;
	struct timespec ms = { 0, 1000000 };
	time_t end = time(NULL) + seconds;
	(void)arg;
	while (time(NULL) < end) {
		pthread_kill(pthread_self(), SIGUSR1);
		sent++;
		if (price(1) <= 0)
			abort();
		nanosleep(&ms, NULL);
	}
	return (void *)sent;
}

int main(int argc, char **argv)
{
	struct sigaction sa = { .sa_handler = on_usr1, .sa_flags = SA_RESTART };
	pthread_t t[4];
	long sent = 0;

	if (argc > 1)
		seconds = atoi(argv[1]);
	sigaction(SIGUSR1, &sa, NULL);
	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("ready\n");
	for (int i = 0; i < 4; i++)
		pthread_create(&t[i], NULL, worker, NULL);
	for (int i = 0; i < 4; i++) {
		void *r;
		pthread_join(t[i], &r);
		sent += (long)r;
	}
	printf("sent %ld got %ld\n", sent, (long)atomic_load(&got));
	return sent == atomic_load(&got) ? 0 : 1;
}
