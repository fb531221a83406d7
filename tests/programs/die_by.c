/* Dies of the signal numbered argv[1] (tests/test_live_signals.py): the
 * default action of SIGBUS, SIGUSR1 and SIGSYS ends the process, and the
 * stub names each with a number that is not Linux's (GDB's 10, 30, 12). */
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc < 2)
		return 2;
	kill(getpid(), atoi(argv[1]));
	pause();
	return 1;
}
