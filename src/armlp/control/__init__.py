"""The controller of a live target and the clients that talk to it.

``armlp run`` (and ``armlp attach``) start a controller that owns the target
for the program's life and serves a control socket; ``armlp patch``,
``unpatch``, ``status`` and ``trace --target`` are clients of that socket.
"""
