#include <armlp/livepatch.h>
extern int no_such_function(int);
int leaf_m(int x) { return no_such_function(x); }
ARMLP_REPLACE(leaf, leaf_m);
