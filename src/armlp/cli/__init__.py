"""The ``armlp`` command."""
