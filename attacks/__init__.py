"""Attack and audit evaluations against securefl.

One subpackage per thing a user runs, each split by role:

* :mod:`attacks.poisoning` -- malicious clients against (robust) aggregators;
* :mod:`attacks.inversion` -- reconstructing a client's images from what the server reads;
* :mod:`attacks.membership` -- was this record in the training set?
* :mod:`attacks.audit` -- empirical lower bounds on epsilon;
* :mod:`attacks.common` -- what more than one of them needs (result writers,
  per-example gradients, rebuilding a library client, the ``attack bench`` command).

In each: ``attacks`` (the attack algorithms), ``cases`` (who sees what: how the
federation or the victim is built, always from securefl's own mechanisms),
``metrics``, ``run`` (one evaluation), ``bench`` (the sweep) and ``commands`` (the
CLI commands, mounted through the ``securefl.commands`` entry points declared in
pyproject.toml). This package may import securefl; securefl never imports it.
"""
