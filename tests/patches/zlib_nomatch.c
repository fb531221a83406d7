/* A visible change: deflate's matcher never finds a match, so from the
 * patch point on deflate emits literals only.  The stream stays a valid
 * zlib stream of the same input, just larger. */
#include <armlp/livepatch.h>
ARMLP_PATCH("zlib-nomatch");
static unsigned longest_match_none(void *s, unsigned cur_match)
{
	(void)s;
	(void)cur_match;
	return 0;
}
ARMLP_REPLACE(longest_match, longest_match_none);
