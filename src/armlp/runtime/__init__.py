"""The in-target runtime: trampolines, ops dispatch, tracer and livepatch
handler in ARM assembly and C, built with the cross toolchain."""
