"""Who masks with whom: the complete graph (Bonawitz et al., CCS 2017) or a random
k-regular Harary graph (SecAgg+, Bell et al., CCS 2020), and the share threshold.

In SecAgg+ each client exchanges masks and key shares only with its ``k``
neighbours, so its cost is O(k * d) instead of O(n * d). The graph is the Harary
graph H(n, k) (node ``i`` linked to ``i +- 1 .. i +- k/2`` modulo ``n``) on a
uniformly random relabelling of the clients drawn from ``os.urandom``, as in Bell
et al. There is no generator argument: a relabelling predictable from a user seed
would let corrupt clients know in advance whose neighbours they will be.
"""

from __future__ import annotations

import math
import os
from typing import Sequence

from securefl.exceptions import ConfigValueError


def share_threshold(holders: int, fraction: float) -> int:
    """Shares needed to reconstruct a secret held by ``holders`` parties:
    ``ceil(fraction * holders)``, at least 2 (a single share would be the secret
    itself), at most ``holders``."""
    return min(holders, max(2, math.ceil(fraction * holders - 1e-9)))


def recommended_neighbors(n: int) -> int:
    """An even k = O(log n) for SecAgg+ (about 2 log2 n), below n."""
    k = 2 * math.ceil(math.log2(max(n, 2)))
    k += k % 2
    return min(k, n - 1 - (n - 1) % 2) if n > 2 else n - 1


def _below(bound: int) -> int:
    """A uniform integer in ``[0, bound)`` from the OS CSPRNG, without modulo bias."""
    limit = (1 << 64) - ((1 << 64) % bound)
    while True:
        x = int.from_bytes(os.urandom(8), "little")
        if x < limit:
            return x % bound


def build_graph(roster: Sequence[str], neighbors: int) -> dict[str, list[str]]:
    """Neighbour lists for ``roster``: complete if ``neighbors`` is 0 or at least
    ``n - 1``, else a random Harary graph of even degree ``neighbors``."""
    n = len(roster)
    if neighbors == 0 or neighbors >= n - 1:
        return {u: [v for v in roster if v != u] for u in roster}
    if neighbors < 2 or neighbors % 2:
        raise ConfigValueError("secagg_neighbors", neighbors, "must be 0 (complete graph) or an even number >= 2")
    order = list(roster)
    for i in range(n - 1, 0, -1):  # Fisher-Yates with the OS CSPRNG
        j = _below(i + 1)
        order[i], order[j] = order[j], order[i]
    half = neighbors // 2
    graph: dict[str, set[str]] = {u: set() for u in roster}
    for i, u in enumerate(order):
        for off in range(1, half + 1):
            v = order[(i + off) % n]
            graph[u].add(v)
            graph[v].add(u)
    return {u: sorted(graph[u]) for u in roster}
