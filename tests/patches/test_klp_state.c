/* The kernel selftests' test_klp_state for a program (tests/test_selftests.py):
 * version 1 of the console_loglevel system state (see test_klp_state.h). */
#define MODNAME test_klp_state
#define CONSOLE_LOGLEVEL_STATE_VERSION 1
#include "test_klp_state.h"
