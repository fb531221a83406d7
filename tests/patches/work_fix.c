/* For tests/programs/sighold.c: work() returns -1 (from the sum). */
#include <armlp/livepatch.h>

ARMLP_PATCH("work-fix");

long work_v2(long n)
{
	(void)n;
	return -1;
}

ARMLP_REPLACE(work, work_v2);
