"""Cryptography only: primitives (key agreement, the key-wrap, AEAD, PRGs),
Shamir sharing, fixed-point encoding, CKKS maths (:mod:`.hazmat`), CKKS key
distribution and authentication, and the secure-aggregation state machines.
Nothing here imports training, privacy or config; the protections that plug these
into a federation are :mod:`securefl.protections`."""
