/* zlib_stubs.c: the C library zlib needs, for a freestanding build.
 *
 * zlib (and its gz* file layer) calls malloc/free, strlen, memchr,
 * strerror, snprintf/vsnprintf, errno and the POSIX file calls
 * open/read/write/lseek/close.  armlp's freestanding runtime has none of
 * them, so here they are, small and without mcount sites (every function is
 * no_instrument_function: only zlib's own code and main are patchable):
 *
 *   malloc/calloc/free  a bump allocator on fs_sbrk; free keeps nothing
 *   read/write/lseek    fds 1 and 2 write to the process's stdout/stderr;
 *                       ZS_MEMFD is an in-memory file, so gzdopen() can
 *                       write a .gz stream and read it back
 *   open                fails with ENOENT (there is no file system)
 *   vsnprintf           %s %d %i %u %x %c %% with an optional l
 */
#include <stdarg.h>
#include "armlp_fs.h"

#define NT __attribute__((no_instrument_function))
#define ZS_MEMFD 100
#define ZS_MEMFILE_MAX (1u << 20)

typedef long zs_off_t;

static int zs_errno;
static unsigned char zs_file[ZS_MEMFILE_MAX];
static unsigned zs_file_len, zs_file_pos;

NT int *__errno_location(void) { return &zs_errno; }

NT void *malloc(fs_size_t n)
{
	void *p = fs_sbrk((long)((n + 7u) & ~7u));
	if (p == (void *)-1) {
		zs_errno = 12;   /* ENOMEM */
		return 0;
	}
	return p;
}

NT void *calloc(fs_size_t n, fs_size_t size)
{
	void *p;
	if (size && n > 0xffffffffu / size)
		return 0;
	p = malloc(n * size);
	if (p)
		memset(p, 0, n * size);
	return p;
}

NT void free(void *p) { (void)p; }

NT fs_size_t strlen(const char *s)
{
	const char *e = s;
	while (*e)
		e++;
	return (fs_size_t)(e - s);
}

NT void *memchr(const void *s, int c, fs_size_t n)
{
	const unsigned char *p = s;
	for (; n; n--, p++)
		if (*p == (unsigned char)c)
			return (void *)p;
	return 0;
}

NT char *strerror(int e) { (void)e; return "I/O error"; }

NT int open(const char *path, int flags, ...)
{
	(void)path; (void)flags;
	zs_errno = 2;   /* ENOENT */
	return -1;
}

NT int close(int fd)
{
	if (fd == ZS_MEMFD)
		zs_file_pos = 0;
	return 0;
}

NT long write(int fd, const void *buf, fs_size_t n)
{
	if (fd != ZS_MEMFD)
		return fs_write(fd, buf, n);
	if (n > ZS_MEMFILE_MAX - zs_file_pos) {
		zs_errno = 28;   /* ENOSPC */
		return -1;
	}
	memcpy(zs_file + zs_file_pos, buf, n);
	zs_file_pos += n;
	if (zs_file_pos > zs_file_len)
		zs_file_len = zs_file_pos;
	return (long)n;
}

NT long read(int fd, void *buf, fs_size_t n)
{
	if (fd != ZS_MEMFD) {
		zs_errno = 9;   /* EBADF */
		return -1;
	}
	if (n > zs_file_len - zs_file_pos)
		n = zs_file_len - zs_file_pos;
	memcpy(buf, zs_file + zs_file_pos, n);
	zs_file_pos += n;
	return (long)n;
}

NT zs_off_t lseek(int fd, zs_off_t off, int whence)
{
	zs_off_t base;
	if (fd != ZS_MEMFD) {
		zs_errno = 29;   /* ESPIPE */
		return -1;
	}
	base = whence == 0 ? 0 : whence == 1 ? (zs_off_t)zs_file_pos : (zs_off_t)zs_file_len;
	if (base + off < 0 || base + off > (zs_off_t)zs_file_len) {
		zs_errno = 22;   /* EINVAL */
		return -1;
	}
	zs_file_pos = (unsigned)(base + off);
	return (zs_off_t)zs_file_pos;
}

/* The in-memory file, for main. */
NT const unsigned char *zs_memfile(unsigned *len)
{
	*len = zs_file_len;
	return zs_file;
}

NT void zs_memfile_rewind(void) { zs_file_pos = 0; }

struct zs_out {
	char *buf;
	fs_size_t size, len;
};

NT static void zs_put(struct zs_out *o, char c)
{
	if (o->len + 1 < o->size)
		o->buf[o->len] = c;
	o->len++;
}

NT static void zs_put_uint(struct zs_out *o, unsigned long v, unsigned base)
{
	char tmp[12];
	int i = 0;
	do {
		tmp[i++] = "0123456789abcdef"[v % base];
		v /= base;
	} while (v);
	while (i)
		zs_put(o, tmp[--i]);
}

NT int vsnprintf(char *buf, fs_size_t size, const char *fmt, va_list ap)
{
	struct zs_out o = { buf, size, 0 };
	for (; *fmt; fmt++) {
		if (*fmt != '%') {
			zs_put(&o, *fmt);
			continue;
		}
		fmt++;
		if (*fmt == 'l')
			fmt++;
		switch (*fmt) {
		case 's': {
			const char *s = va_arg(ap, const char *);
			while (*s)
				zs_put(&o, *s++);
			break;
		}
		case 'd': case 'i': {
			long v = va_arg(ap, long);
			if (v < 0) {
				zs_put(&o, '-');
				zs_put_uint(&o, 0ul - (unsigned long)v, 10);
			} else {
				zs_put_uint(&o, (unsigned long)v, 10);
			}
			break;
		}
		case 'u': zs_put_uint(&o, va_arg(ap, unsigned long), 10); break;
		case 'x': zs_put_uint(&o, va_arg(ap, unsigned long), 16); break;
		case 'c': zs_put(&o, (char)va_arg(ap, int)); break;
		case '%': zs_put(&o, '%'); break;
		default: return -1;
		}
	}
	if (size)
		buf[o.len < size ? o.len : size - 1] = 0;
	return (int)o.len;
}

NT int snprintf(char *buf, fs_size_t size, const char *fmt, ...)
{
	va_list ap;
	int n;
	va_start(ap, fmt);
	n = vsnprintf(buf, size, fmt, ap);
	va_end(ap);
	return n;
}
