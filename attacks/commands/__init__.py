"""``securefl attack ...`` and ``securefl audit empirical``: one module per command,
each with a ``register(subparsers)`` function mounted by :mod:`securefl.cli`."""
