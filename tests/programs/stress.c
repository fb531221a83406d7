/* Stress target: 8 threads call f() and g() in tight loops and check every
 * result is the old or the new function's, never anything else.  Runs until
 * the file named by argv[1] exists (the test creates it when done), then
 * prints the call count, how many f() results came from the new f, and the
 * number of bad results, and exits 0 only if there were none. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define THREADS 8

__attribute__((noinline, noipa)) int f(int x) { return x + 1; }          /* new: x + 1001 */
__attribute__((noinline, noipa)) long long g(long long a, int b, int c, int d, int e)
{
	return a + b + c + d + e;                                           /* new: times 2 */
}

static volatile int stop;
static volatile unsigned long total[THREADS], bad[THREADS], fresh[THREADS];

static void *worker(void *arg)
{
	int id = (int)(long)arg;
	unsigned long n = 0, b = 0, nf = 0;
	while (!stop) {
		int x = (int)(n & 0xffff);
		int r = f(x);
		if (r == x + 1001)
			nf++;
		else if (r != x + 1)
			b++;
		long long s = g(x, 1, 2, 3, id);
		long long old = (long long)x + 6 + id;
		if (s != old && s != 2 * old)
			b++;
		n++;
		if ((n & 0xfff) == 0) {
			total[id] = n;
			bad[id] = b;
			fresh[id] = nf;
		}
	}
	total[id] = n;
	bad[id] = b;
	fresh[id] = nf;
	return NULL;
}

int main(int argc, char **argv)
{
	pthread_t t[THREADS];
	const char *done = argc > 1 ? argv[1] : "/nonexistent";
	for (long i = 0; i < THREADS; i++)
		pthread_create(&t[i], NULL, worker, (void *)i);
	printf("started %d threads\n", THREADS);
	fflush(stdout);
	while (access(done, F_OK) != 0)
		usleep(20000);
	stop = 1;
	unsigned long n = 0, b = 0, nf = 0;
	for (int i = 0; i < THREADS; i++) {
		pthread_join(t[i], NULL);
		n += total[i];
		b += bad[i];
		nf += fresh[i];
	}
	printf("calls %lu new %lu bad %lu\n", n, nf, b);
	return b != 0;
}
