/* A static glibc program for the emulator: stdio, string functions, TLS
 * (errno, through __kuser_get_tls), RELRO (mprotect at start-up). */
#include <errno.h>
#include <stdio.h>
#include <string.h>

__attribute__((noinline, noipa)) int work(int x) { return x * 3; }
__attribute__((noinline, noipa)) int read_errno(void) { return errno; }

int main(void)
{
	char buf[64];
	errno = 42;
	int tls_ok = read_errno() == 42;
	snprintf(buf, sizeof buf, "r=%d", work(14));
	puts(buf);
	return strlen(buf) == 4 && tls_ok ? 0 : 1;
}
