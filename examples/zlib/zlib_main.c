/* zlib_main.c: a freestanding program that runs real zlib code.
 *
 * Built with all of zlib's library files (armlp's tests: tests/zlib_build.py)
 * and zlib_stubs.c, every zlib function compiled -marm -pg -mapcs-frame -O2.
 * It makes 64 KiB of text and round-trips it through
 *
 *   compress2 / uncompress          (compress.c, uncompr.c, deflate, inflate)
 *   deflate / inflate, gzip wrapper, small buffers, a parameter change
 *   deflate raw / inflateBack       (infback.c)
 *   gzdopen/gzwrite/gzprintf/gzread/gzgets on an in-memory file (gz*.c)
 *
 * prints the sizes, crc32 and adler32 of the data and "round trip ok", and
 * writes the .gz file to stderr, so a test can check it with another zlib.
 * Exit status 0 when every round trip gave back the data.
 */
#include "armlp_fs.h"
#include "zlib.h"

#define N (64 * 1024)
#define ZS_MEMFD 100

const unsigned char *zs_memfile(unsigned *len);
void zs_memfile_rewind(void);

static unsigned char data[N], comp[N + N / 8 + 64], back[N + 64];
static unsigned char window[32768];
static unsigned long seed = 12345;

static const char *const words[] = {
	"live", "patch", "arm", "mcount", "frame", "pointer", "prologue", "undo",
	"trampoline", "zlib", "deflate", "inflate", "huffman", "window", "the", "a",
};

static unsigned rnd(void)
{
	seed = seed * 1103515245u + 12345u;
	return (unsigned)(seed >> 16) & 0x7fff;
}

static void make_data(void)
{
	unsigned i = 0;
	while (i < N) {
		const char *w = words[rnd() % 16];
		while (*w && i < N)
			data[i++] = (unsigned char)*w++;
		if (i < N)
			data[i++] = rnd() % 11 ? ' ' : '\n';
	}
}

static int fail(const char *what, int code)
{
	fs_print("FAIL ");
	fs_print(what);
	fs_print(" ");
	fs_print_int(code);
	fs_print("\n");
	return 1;
}

static int same(const unsigned char *a, unsigned long n)
{
	return n == N && memcmp(a, data, N) == 0;
}

static int one_shot(void)
{
	uLongf clen = sizeof comp, blen = sizeof back;
	int r = compress2(comp, &clen, data, N, 9);
	if (r != Z_OK)
		return fail("compress2", r);
	r = uncompress(back, &blen, comp, clen);
	if (r != Z_OK || !same(back, blen))
		return fail("uncompress", r);
	fs_print("compress2 ");
	fs_print_uint(N);
	fs_print(" -> ");
	fs_print_uint(clen);
	fs_print("\n");
	return 0;
}

static int streaming(void)
{
	z_stream s;
	int r;
	unsigned long clen;
	memset(&s, 0, sizeof s);
	r = deflateInit2(&s, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY);
	if (r != Z_OK)
		return fail("deflateInit2", r);
	s.next_in = data;
	s.next_out = comp;
	s.avail_out = sizeof comp;
	while (s.total_in < N) {   /* 1000-byte pieces; halfway, switch level */
		unsigned left = N - (unsigned)s.total_in;
		s.avail_in = left < 1000 ? left : 1000;
		if (s.total_in >= N / 2 && s.total_in < N / 2 + 1000)
			r = deflateParams(&s, 1, Z_FILTERED);
		else
			r = deflate(&s, Z_NO_FLUSH);
		if (r != Z_OK && r != Z_BUF_ERROR)
			return fail("deflate", r);
	}
	r = deflate(&s, Z_FINISH);
	if (r != Z_STREAM_END)
		return fail("deflate finish", r);
	clen = s.total_out;
	deflateEnd(&s);

	memset(&s, 0, sizeof s);
	r = inflateInit2(&s, 15 + 32);
	if (r != Z_OK)
		return fail("inflateInit2", r);
	s.next_in = comp;
	s.next_out = back;
	do {   /* 100 bytes in, 1000 out at a time */
		s.avail_in = clen - s.total_in < 100 ? clen - s.total_in : 100;
		s.avail_out = 1000;
		r = inflate(&s, Z_NO_FLUSH);
	} while (r == Z_OK || (r == Z_BUF_ERROR && s.total_in < clen));
	if (r != Z_STREAM_END || !same(back, s.total_out))
		return fail("inflate", r);
	inflateEnd(&s);
	fs_print("gzip stream ");
	fs_print_uint(clen);
	fs_print("\n");
	return 0;
}

static unsigned raw_len;

static unsigned in_fn(void *d, z_const unsigned char **buf)
{
	(void)d;
	*buf = comp;
	return raw_len;
}

static int out_fn(void *d, unsigned char *buf, unsigned len)
{
	unsigned long *pos = d;
	if (*pos + len > sizeof back)
		return 1;
	memcpy(back + *pos, buf, len);
	*pos += len;
	return 0;
}

static int raw_back(void)
{
	z_stream s;
	unsigned long pos = 0;
	int r;
	memset(&s, 0, sizeof s);
	r = deflateInit2(&s, 9, Z_DEFLATED, -15, 9, Z_HUFFMAN_ONLY);
	if (r != Z_OK)
		return fail("deflateInit2 raw", r);
	s.next_in = data;
	s.avail_in = N;
	s.next_out = comp;
	s.avail_out = sizeof comp;
	r = deflate(&s, Z_FINISH);
	if (r != Z_STREAM_END)
		return fail("deflate raw", r);
	raw_len = (unsigned)s.total_out;
	deflateEnd(&s);

	memset(&s, 0, sizeof s);
	r = inflateBackInit(&s, 15, window);
	if (r != Z_OK)
		return fail("inflateBackInit", r);
	r = inflateBack(&s, in_fn, 0, out_fn, &pos);
	inflateBackEnd(&s);
	if (r != Z_STREAM_END || !same(back, pos))
		return fail("inflateBack", r);
	fs_print("raw huffman ");
	fs_print_uint(raw_len);
	fs_print("\n");
	return 0;
}

static int gzfile(void)
{
	gzFile f = gzdopen(ZS_MEMFD, "wb9");
	char line[64];
	unsigned len;
	int r;
	if (!f)
		return fail("gzdopen w", 0);
	if (gzwrite(f, data, N / 2) != N / 2 || gzwrite(f, data + N / 2, N / 2) != N / 2)
		return fail("gzwrite", 0);
	if (gzprintf(f, "%s %d\n", "trailer", 42) != 11)
		return fail("gzprintf", 0);
	r = gzclose(f);
	if (r != Z_OK)
		return fail("gzclose w", r);

	zs_memfile_rewind();
	f = gzdopen(ZS_MEMFD, "rb");
	if (!f)
		return fail("gzdopen r", 0);
	r = gzread(f, back, N);
	if (r != N || !same(back, N))
		return fail("gzread", r);
	if (!gzgets(f, line, sizeof line) || memcmp(line, "trailer 42\n", 12) != 0)
		return fail("gzgets", 0);
	if (gzgetc(f) != -1 || !gzeof(f))
		return fail("gzeof", 0);
	r = gzclose(f);
	if (r != Z_OK)
		return fail("gzclose r", r);
	fs_print("gzfile ok, compile flags ");
	fs_print_hex(zlibCompileFlags());   /* zutil.c */
	fs_print("\n");
	return 0;
}

int main(void)
{
	const unsigned char *gz;
	unsigned gzlen;
	make_data();
	if (one_shot() || streaming() || raw_back() || gzfile())
		return 1;
	fs_print("zlib ");
	fs_print(zlibVersion());
	fs_print(" length ");
	fs_print_uint(N);
	fs_print(" crc32 ");
	fs_print_hex(crc32(0L, data, N));
	fs_print(" adler32 ");
	fs_print_hex(adler32(1L, data, N));
	fs_print("\nround trip ok\n");
	gz = zs_memfile(&gzlen);
	fs_write(2, gz, gzlen);
	return 0;
}
