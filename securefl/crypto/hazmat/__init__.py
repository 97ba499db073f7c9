"""Raw cryptographic primitives ("hazardous materials").

Nothing here decides who sends what to whom; the protocols in
:mod:`securefl.crypto` build on these pieces. Use them directly only if you know
which guarantees the protocol layer would otherwise give you.
"""
