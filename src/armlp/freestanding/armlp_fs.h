/* armlp_fs.h: the tiny C library of armlp's freestanding test programs.
 *
 * Programs built by armlp.program_build.build_program(freestanding=True) start in
 * start.S, which calls main(argc, argv, envp) and exits with its result.
 * Everything here talks to Linux (or armlp's emulator) through raw
 * ARM EABI syscalls; none of it has an mcount site.
 */
#ifndef ARMLP_FS_H
#define ARMLP_FS_H

typedef unsigned int fs_size_t;

#define FS_SYS_exit            1
#define FS_SYS_write           4
#define FS_SYS_getpid         20
#define FS_SYS_brk            45
#define FS_SYS_nanosleep     162
#define FS_SYS_gettid        224
#define FS_SYS_exit_group    248
#define FS_SYS_clock_gettime 263

#define FS_CLOCK_REALTIME  0
#define FS_CLOCK_MONOTONIC 1

#define FS_NOINLINE __attribute__((noinline, noipa))
#define FS_NOTRACE  __attribute__((no_instrument_function))

struct fs_timespec {
	long tv_sec;   /* 32-bit time_t, the armel ABI of the plain syscalls */
	long tv_nsec;
};

extern char **fs_environ;

long fs_syscall(long nr, long a0, long a1, long a2, long a3, long a4, long a5);

long fs_write(int fd, const void *buf, fs_size_t len);
fs_size_t fs_strlen(const char *s);
void fs_write_str(int fd, const char *s);
void fs_write_int(int fd, long v);
void fs_write_uint(int fd, unsigned long v);
void fs_write_u64(int fd, unsigned long long v);
void fs_write_hex(int fd, unsigned long v);      /* 0x%08lx */

/* The same on stdout. */
void fs_print(const char *s);
void fs_print_int(long v);
void fs_print_uint(unsigned long v);
void fs_print_u64(unsigned long long v);
void fs_print_hex(unsigned long v);

__attribute__((noreturn)) void fs_exit(int status);   /* exit_group */

int fs_clock_gettime(int clock, struct fs_timespec *ts);
int fs_nanosleep(const struct fs_timespec *req, struct fs_timespec *rem);
unsigned long long fs_now_ns(void);                   /* CLOCK_MONOTONIC in ns */
void fs_sleep_ns(unsigned long long ns);

void *fs_brk(void *addr);       /* the raw syscall: returns the (new) break */
void *fs_sbrk(long increment);  /* old break, or (void *)-1 */

void *memcpy(void *dst, const void *src, fs_size_t n);
void *memmove(void *dst, const void *src, fs_size_t n);
void *memset(void *dst, int c, fs_size_t n);
int memcmp(const void *a, const void *b, fs_size_t n);
int raise(int sig);   /* prints the signal, exits with 128 + sig */

#endif
