/* Streaming compressor over zlib: deflate the file argv[1] to argv[2] in
 * chunks (zlib format, level 6), sleeping a little between chunks so a live
 * patch lands mid-stream.  Prints "chunk I in N out M" after each chunk and
 * "done in N out M" at the end; exits non-zero on any zlib or I/O error. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include "zlib.h"

#define CHUNK (256 * 1024)

static unsigned char inbuf[CHUNK], outbuf[CHUNK];

/* One line per chunk (a patchable function of the program's own, for a
 * patch that changes the program and zlib at once). */
__attribute__((noinline)) void report(int i, unsigned long in, unsigned long out)
{
	printf("chunk %d in %lu out %lu\n", i, in, out);
	fflush(stdout);
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: zstream IN OUT [SLEEP_US]\n");
		return 2;
	}
	useconds_t pause = argc > 3 ? (useconds_t)atoi(argv[3]) : 20000;
	FILE *in = fopen(argv[1], "rb"), *out = fopen(argv[2], "wb");
	if (!in || !out) {
		perror("open");
		return 2;
	}
	z_stream s = {0};
	if (deflateInit(&s, 6) != Z_OK)
		return 3;
	unsigned long total_in = 0, total_out = 0;
	int flush = Z_NO_FLUSH;
	for (int i = 0; flush != Z_FINISH; i++) {
		size_t n = fread(inbuf, 1, CHUNK, in);
		if (ferror(in))
			return 4;
		flush = feof(in) ? Z_FINISH : Z_NO_FLUSH;
		s.next_in = inbuf;
		s.avail_in = (uInt)n;
		do {
			s.next_out = outbuf;
			s.avail_out = CHUNK;
			int r = deflate(&s, flush);
			if (r == Z_STREAM_ERROR)
				return 5;
			size_t have = CHUNK - s.avail_out;
			if (fwrite(outbuf, 1, have, out) != have)
				return 6;
			total_out += have;
		} while (s.avail_out == 0);
		total_in += n;
		fflush(out);
		report(i, total_in, total_out);
		usleep(pause);
	}
	deflateEnd(&s);
	fclose(out);
	printf("done in %lu out %lu\n", total_in, total_out);
	return 0;
}
