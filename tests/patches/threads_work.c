/* For tests/programs/threads.c: work(i) pins counter i at 0xc0de0000 + i
 * instead of counting, so a test can see every thread use the new code. */
#include <armlp/livepatch.h>

ARMLP_PATCH("work-fix");

extern volatile unsigned long counters[4];

void work_v2(int i)
{
	counters[i] = 0xc0de0000 + i;
}

ARMLP_REPLACE(work, work_v2);
