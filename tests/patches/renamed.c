/* A copy of the program's leaf() compiled under another name (as when a
 * patch is built from the program's own source with -D renames): the
 * descriptor must still name the function the patch replaces, "leaf". */
#define leaf lp_leaf
#include <armlp/livepatch.h>
ARMLP_PATCH("renamed");
int leaf(int x) { return x + 7; }
ARMLP_REPLACE(leaf, leaf);
