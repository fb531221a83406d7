/* A streaming compressor over zlib: deflates the file argv[1] into argv[2]
 * in 64 KiB chunks, sleeping 3 ms between chunks so a live patch lands in
 * the middle of the stream; prints the sizes. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "zlib.h"

#define CHUNK 65536

int main(int argc, char **argv)
{
	static unsigned char in[CHUNK], out[CHUNK];
	z_stream s = { 0 };
	FILE *src, *dst;
	unsigned long long total_in = 0, total_out = 0;
	int flush, ret;

	if (argc < 3 || !(src = fopen(argv[1], "rb")) || !(dst = fopen(argv[2], "wb"))) {
		fprintf(stderr, "usage: zstream IN OUT\n");
		return 2;
	}
	if (deflateInit(&s, 6) != Z_OK)
		return 3;
	do {
		s.avail_in = fread(in, 1, CHUNK, src);
		s.next_in = in;
		total_in += s.avail_in;
		flush = feof(src) ? Z_FINISH : Z_NO_FLUSH;
		do {
			s.avail_out = CHUNK;
			s.next_out = out;
			ret = deflate(&s, flush);
			if (ret == Z_STREAM_ERROR)
				return 4;
			fwrite(out, 1, CHUNK - s.avail_out, dst);
			total_out += CHUNK - s.avail_out;
		} while (s.avail_out == 0);
		struct timespec ts = { 0, 3000000 };
		nanosleep(&ts, NULL);
	} while (flush != Z_FINISH);
	deflateEnd(&s);
	fclose(dst);
	printf("in %llu out %llu\n", total_in, total_out);
	return 0;
}
