/* 100 patchable functions hammered by 4 threads, each result checked to be
 * the old one (x * (i + 3) + i) or the new one (that + 1000).  Runs until
 * the file argv[1] exists, then writes "calls N new M bad B" to the file
 * argv[2] and exits 0 only if B is 0. */
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>

#define F(i) __attribute__((noinline, noipa)) int f##i(int x) { return x * (i + 3) + i; }
#define T10(d) F(d##0) F(d##1) F(d##2) F(d##3) F(d##4) F(d##5) F(d##6) F(d##7) F(d##8) F(d##9)
F(0) F(1) F(2) F(3) F(4) F(5) F(6) F(7) F(8) F(9)
T10(1) T10(2) T10(3) T10(4) T10(5) T10(6) T10(7) T10(8) T10(9)

#define P(i) f##i,
#define P10(d) P(d##0) P(d##1) P(d##2) P(d##3) P(d##4) P(d##5) P(d##6) P(d##7) P(d##8) P(d##9)
static int (*const fns[100])(int) = {
	P(0) P(1) P(2) P(3) P(4) P(5) P(6) P(7) P(8) P(9)
	P10(1) P10(2) P10(3) P10(4) P10(5) P10(6) P10(7) P10(8) P10(9)
};

static volatile int stop;
static unsigned long calls[4], fresh[4], bad[4];

static void *worker(void *arg)
{
	int id = (int)(long)arg;
	for (unsigned long n = 0; !stop; n++) {
		int i = (int)(n % 100), x = (int)(n & 0xfff);
		int r = fns[i](x), old = x * (i + 3) + i;
		if (r == old + 1000)
			fresh[id]++;
		else if (r != old)
			bad[id]++;
		calls[id]++;
	}
	return NULL;
}

int main(int argc, char **argv)
{
	pthread_t t[4];
	if (argc < 3)
		return 2;
	for (long i = 0; i < 4; i++)
		pthread_create(&t[i], NULL, worker, (void *)i);
	while (access(argv[1], F_OK) != 0)
		usleep(10000);
	stop = 1;
	unsigned long n = 0, nf = 0, b = 0;
	for (int i = 0; i < 4; i++) {
		pthread_join(t[i], NULL);
		n += calls[i];
		nf += fresh[i];
		b += bad[i];
	}
	FILE *out = fopen(argv[2], "w");
	fprintf(out, "calls %lu new %lu bad %lu\n", n, nf, b);
	fclose(out);
	return b != 0;
}
