/* Replaces several zlib functions with copies built from the unchanged
 * zlib source: the program's output must not change at all.  (Build with
 * -I to zlib's source directory.) */
#include "deflate.c"
#include "adler32.c"
#include <armlp/livepatch.h>

ARMLP_PATCH("zlib-same");
ARMLP_REPLACE(longest_match, longest_match);
ARMLP_REPLACE(fill_window, fill_window);
ARMLP_REPLACE(deflate_slow, deflate_slow);
ARMLP_REPLACE(adler32_z, adler32_z);
ARMLP_REPLACE(adler32, adler32);
