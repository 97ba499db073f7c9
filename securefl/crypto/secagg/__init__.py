"""Secure aggregation with pairwise masks (Bonawitz et al., CCS 2017) and its sparse
variant SecAgg+ (Bell et al., CCS 2020).

Layers: :mod:`securefl.crypto.primitives`, :mod:`securefl.crypto.shamir` and
:mod:`securefl.crypto.quantize` hold the maths; :mod:`.client` and :mod:`.server`
are the protocol state machines; :mod:`securefl.protections.secagg` plugs them into
the protection seam (``--protect secagg``).
"""
