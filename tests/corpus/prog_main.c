/* Freestanding entry for the corpus (armlp.program_build): the proofs call the
 * corpus functions directly, main only has to link. */
#include "armlp_fs.h"

extern int calls_many(int);

FS_NOTRACE void exit(int code) { fs_exit(code); }

int main(int argc, char **argv)
{
	(void)argv;
	return calls_many(argc) & 1;
}
