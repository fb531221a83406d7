/* Copies of zlib functions built from the unchanged source: the checksums
 * (adler32.c) and deflate's lazy matcher with its helpers (deflate.c,
 * static functions).  The copies of the library's exported functions are
 * renamed (-D on the command line, see tests/test_live_zlib.py) so they do
 * not clash with the program's symbols. */
#include <armlp/livepatch.h>
#include "adler32.c"
#include "deflate.c"

ARMLP_PATCH("zlib-same");
ARMLP_REPLACE_POS(adler32, 0, lp_adler32);      /* #old: not macro-expanded */
ARMLP_REPLACE_POS(adler32_z, 0, lp_adler32_z);
ARMLP_REPLACE(deflate_slow, deflate_slow);
ARMLP_REPLACE(longest_match, longest_match);
ARMLP_REPLACE(fill_window, fill_window);
