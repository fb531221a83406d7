/* For tests/programs/zstream.c linked against libz.so.1: one patch, two
 * objects.  The program's report() marks its lines; zlib's matcher finds
 * no match (deflate emits literals only: a larger, still valid stream). */
#include <stdio.h>
#include <armlp/livepatch.h>
ARMLP_PATCH("zlib-shared");

void report_v2(int i, unsigned long in, unsigned long out)
{
	printf("chunk %d in %lu out %lu patched\n", i, in, out);
	fflush(stdout);
}
ARMLP_REPLACE(report, report_v2);

ARMLP_OBJECT("libz.so.1");
static unsigned longest_match_none(void *s, unsigned cur_match)
{
	(void)s;
	(void)cur_match;
	return 0;
}
ARMLP_REPLACE(longest_match, longest_match_none);
