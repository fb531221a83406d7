/* A program whose threads sit in every kind of blocking system call while
 * armlp stops it again and again (tests/test_live_invisible.py).  Any sign
 * of a stop is printed: a call that fails with EINTR ("EINTR <call>"), a
 * sleep or timeout that ends early ("SHORT <call>").  The main thread echoes
 * its standard input line by line ("line <text>") and, at end of input,
 * prints "done" and exits 0.  Worker 0 calls price() every millisecond.
 *
 * argv[1] "restart": the program's own SIGUSR1 handler has SA_RESTART
 * (otherwise not): a signal that reached the program would show. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <linux/futex.h>

static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;

static void say(const char *what, const char *call)
{
	pthread_mutex_lock(&out_lock);
	printf("%s %s\n", what, call);
	fflush(stdout);
	pthread_mutex_unlock(&out_lock);
}

static long long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

static void check(long r, const char *call)
{
	if (r < 0 && errno == EINTR)
		say("EINTR", call);
}

__attribute__((noinline, noipa)) int price(int items) { return items * 100; }

static void *hot(void *arg)
{
	(void)arg;
	for (;;) {
		price(3);
		struct timespec ts = { 0, 1000000 };
		while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
			say("EINTR", "nanosleep-1ms");
	}
	return NULL;
}

static void *sleeper(void *arg)
{
	(void)arg;
	for (;;) {
		struct timespec ts = { 0, 300000000 };
		long long t0 = now_ms();
		int r = nanosleep(&ts, NULL);
		check(r, "nanosleep");
		if (r == 0 && now_ms() - t0 < 299)
			say("SHORT", "nanosleep");
	}
	return NULL;
}

static int never[2];	/* a pipe nobody writes */

static void *poller(void *arg)
{
	(void)arg;
	for (;;) {
		struct pollfd p = { never[0], POLLIN, 0 };
		long long t0 = now_ms();
		int r = poll(&p, 1, 200);
		check(r, "poll");
		if (r == 0 && now_ms() - t0 < 199)
			say("SHORT", "poll");
	}
	return NULL;
}

static void *selecter(void *arg)
{
	(void)arg;
	for (;;) {
		fd_set set;
		FD_ZERO(&set);
		FD_SET(never[0], &set);
		struct timeval tv = { 0, 200000 };
		long long t0 = now_ms();
		int r = select(never[0] + 1, &set, NULL, NULL, &tv);
		check(r, "select");
		if (r == 0 && now_ms() - t0 < 199)
			say("SHORT", "select");
	}
	return NULL;
}

static int futex_word;

static void *futexer(void *arg)
{
	(void)arg;
	for (;;) {
		struct timespec ts = { 0, 250000000 };
		long r = syscall(SYS_futex, &futex_word, FUTEX_WAIT, 0, &ts, NULL, 0);
		if (r < 0 && errno != ETIMEDOUT)
			say(errno == EINTR ? "EINTR" : "ERROR", "futex");
	}
	return NULL;
}

static int listener, pair[2];

static void *acceptor(void *arg)
{
	(void)arg;
	for (;;)
		check(accept(listener, NULL, NULL), "accept");
	return NULL;
}

static void *receiver(void *arg)
{
	char c;
	(void)arg;
	for (;;)
		check(recv(pair[0], &c, 1, 0), "recv");
	return NULL;
}

static int full[2];	/* a pipe kept full */

static void *writer(void *arg)
{
	(void)arg;
	for (;;)
		check(write(full[1], "x", 1), "write");
	return NULL;
}

static void *waiter(void *arg)
{
	pid_t child = *(pid_t *)arg;
	for (;;)
		check(waitpid(child, NULL, 0), "waitpid");
	return NULL;
}

static void on_usr1(int sig) { (void)sig; }

int main(int argc, char **argv)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_usr1;
	sa.sa_flags = argc > 1 && strcmp(argv[1], "restart") == 0 ? SA_RESTART : 0;
	sigaction(SIGUSR1, &sa, NULL);
	setvbuf(stdout, NULL, _IOLBF, 0);

	if (pipe(never) || pipe(full) || socketpair(AF_UNIX, SOCK_STREAM, 0, pair))
		return 3;
	listener = socket(AF_UNIX, SOCK_STREAM, 0);
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	snprintf(addr.sun_path + 1, sizeof addr.sun_path - 1, "armlp-blocking-%d", getpid());
	if (bind(listener, (struct sockaddr *)&addr, sizeof addr) || listen(listener, 1))
		return 4;
	/* fill the pipe, then block on it */
	int flags = fcntl(full[1], F_GETFL);
	fcntl(full[1], F_SETFL, flags | O_NONBLOCK);
	while (write(full[1], "x", 1) == 1)
		;
	fcntl(full[1], F_SETFL, flags);
	static pid_t child;
	child = fork();
	if (child == 0) {
		for (;;)
			pause();
	}

	void *(*fns[])(void *) = { hot, sleeper, poller, selecter, futexer, acceptor,
				   receiver, writer, waiter };
	pthread_t t;
	for (unsigned i = 0; i < sizeof fns / sizeof fns[0]; i++)
		pthread_create(&t, NULL, fns[i], fns[i] == waiter ? (void *)&child : NULL);
	printf("ready\n");

	char line[256];
	for (;;) {
		ssize_t n = 0;
		size_t len = 0;
		/* one line, read byte by byte so that every read blocks */
		for (;;) {
			n = read(0, line + len, 1);
			if (n < 0 && errno == EINTR) {
				say("EINTR", "read");
				continue;
			}
			if (n <= 0 || line[len] == '\n' || ++len == sizeof line - 1)
				break;
		}
		if (n <= 0 && len == 0)
			break;
		line[len] = 0;
		pthread_mutex_lock(&out_lock);
		printf("line %s\n", line);
		pthread_mutex_unlock(&out_lock);
	}
	printf("done\n");
	kill(child, SIGKILL);
	_exit(0);
}
