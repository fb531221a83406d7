/* armlp's freestanding C library (see armlp_fs.h).
 * Compiled without -pg and with no_instrument_function: no mcount sites. */
#include "armlp_fs.h"

#pragma GCC optimize ("no-tree-loop-distribute-patterns")

#define NT FS_NOTRACE

char **fs_environ;

NT long fs_write(int fd, const void *buf, fs_size_t len)
{
	return fs_syscall(FS_SYS_write, fd, (long)buf, (long)len, 0, 0, 0);
}

NT fs_size_t fs_strlen(const char *s)
{
	const char *p = s;
	while (*p)
		p++;
	return (fs_size_t)(p - s);
}

NT void fs_write_str(int fd, const char *s)
{
	fs_write(fd, s, fs_strlen(s));
}

NT void fs_write_u64(int fd, unsigned long long v)
{
	char buf[24];
	int i = sizeof buf;
	do {
		buf[--i] = (char)('0' + (int)(v % 10u));
		v /= 10u;
	} while (v);
	fs_write(fd, buf + i, sizeof buf - (fs_size_t)i);
}

NT void fs_write_uint(int fd, unsigned long v)
{
	char buf[12];
	int i = sizeof buf;
	do {
		buf[--i] = (char)('0' + (int)(v % 10u));
		v /= 10u;
	} while (v);
	fs_write(fd, buf + i, sizeof buf - (fs_size_t)i);
}

NT void fs_write_int(int fd, long v)
{
	if (v < 0) {
		fs_write(fd, "-", 1);
		fs_write_uint(fd, 0u - (unsigned long)v);
	} else {
		fs_write_uint(fd, (unsigned long)v);
	}
}

NT void fs_write_hex(int fd, unsigned long v)
{
	static const char digits[] = "0123456789abcdef";
	char buf[10];
	buf[0] = '0';
	buf[1] = 'x';
	for (int i = 0; i < 8; i++)
		buf[9 - i] = digits[(v >> (4 * i)) & 0xf];
	fs_write(fd, buf, sizeof buf);
}

NT void fs_print(const char *s) { fs_write_str(1, s); }
NT void fs_print_int(long v) { fs_write_int(1, v); }
NT void fs_print_uint(unsigned long v) { fs_write_uint(1, v); }
NT void fs_print_u64(unsigned long long v) { fs_write_u64(1, v); }
NT void fs_print_hex(unsigned long v) { fs_write_hex(1, v); }

NT void fs_exit(int status)
{
	for (;;)
		fs_syscall(FS_SYS_exit_group, status, 0, 0, 0, 0, 0);
}

NT int fs_clock_gettime(int clock, struct fs_timespec *ts)
{
	return (int)fs_syscall(FS_SYS_clock_gettime, clock, (long)ts, 0, 0, 0, 0);
}

NT int fs_nanosleep(const struct fs_timespec *req, struct fs_timespec *rem)
{
	return (int)fs_syscall(FS_SYS_nanosleep, (long)req, (long)rem, 0, 0, 0, 0);
}

NT unsigned long long fs_now_ns(void)
{
	struct fs_timespec ts;
	fs_clock_gettime(FS_CLOCK_MONOTONIC, &ts);
	return (unsigned long long)ts.tv_sec * 1000000000ull + (unsigned long long)ts.tv_nsec;
}

NT void fs_sleep_ns(unsigned long long ns)
{
	struct fs_timespec ts;
	ts.tv_sec = (long)(ns / 1000000000ull);
	ts.tv_nsec = (long)(ns % 1000000000ull);
	fs_nanosleep(&ts, 0);
}

NT void *fs_brk(void *addr)
{
	return (void *)fs_syscall(FS_SYS_brk, (long)addr, 0, 0, 0, 0, 0);
}

NT void *fs_sbrk(long increment)
{
	char *old = fs_brk(0);
	if (increment == 0)
		return old;
	char *want = old + increment;
	if ((char *)fs_brk(want) != want)
		return (void *)-1;
	return old;
}

NT void *memcpy(void *dst, const void *src, fs_size_t n)
{
	unsigned char *d = dst;
	const unsigned char *s = src;
	while (n--)
		*d++ = *s++;
	return dst;
}

NT void *memmove(void *dst, const void *src, fs_size_t n)
{
	unsigned char *d = dst;
	const unsigned char *s = src;
	if (d < s) {
		while (n--)
			*d++ = *s++;
	} else {
		while (n--)
			d[n] = s[n];
	}
	return dst;
}

NT void *memset(void *dst, int c, fs_size_t n)
{
	unsigned char *d = dst;
	while (n--)
		*d++ = (unsigned char)c;
	return dst;
}

NT int memcmp(const void *a, const void *b, fs_size_t n)
{
	const unsigned char *x = a, *y = b;
	for (; n; n--, x++, y++)
		if (*x != *y)
			return *x - *y;
	return 0;
}

/* libgcc's division-by-zero handler (__aeabi_idiv0 ...) calls raise(SIGFPE). */
NT int raise(int sig)
{
	fs_write_str(2, "armlp_fs: signal ");
	fs_write_int(2, sig);
	fs_write_str(2, "\n");
	fs_exit(128 + sig);
}
