/* A visible change: longest_match() never finds a match, so deflate emits
 * only literals from the patch point on — a different, larger, still valid
 * stream.  (Build with -I to zlib's source directory.) */
#include "deflate.h"
#include <armlp/livepatch.h>

ARMLP_PATCH("zlib-literals");

uInt longest_match_none(deflate_state *s, IPos cur_match)
{
	(void)s;
	(void)cur_match;
	return MIN_MATCH - 1;
}

ARMLP_REPLACE(longest_match, longest_match_none);
