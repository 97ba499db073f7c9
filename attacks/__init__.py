"""Attack and audit evaluations against securefl (poisoning, inversion, membership, audits).

This package may import securefl; securefl never imports it.
"""
