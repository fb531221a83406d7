/* The kernel selftests' test_klp_state2 for a program (tests/test_selftests.py):
 * version 2 of the console_loglevel system state, which supports migration
 * (see test_klp_state.h).  -DMODNAME=test_klp_state3 builds the kernel's
 * test_klp_state3, the same source under another name. */
#ifndef MODNAME
#define MODNAME test_klp_state2
#endif
#define CONSOLE_LOGLEVEL_STATE_VERSION 2
#include "test_klp_state.h"
