"""SecAgg+ neighbour graphs and share thresholds."""

import pytest

from securefl.crypto.secagg.graph import build_graph, recommended_neighbors, share_threshold
from securefl.exceptions import ConfigValueError


@pytest.mark.parametrize("n, k", [(10, 2), (50, 8), (1000, 20), (7, 4)])
def test_harary_graph_is_k_regular_and_symmetric(n, k):
    roster = [f"c{i}" for i in range(n)]
    g = build_graph(roster, k)
    assert set(g) == set(roster)
    for u, nbrs in g.items():
        assert len(nbrs) == k and u not in nbrs and len(set(nbrs)) == k
        assert all(u in g[v] for v in nbrs)


def test_graph_is_random_and_complete_when_asked():
    roster = [f"c{i}" for i in range(30)]
    a, b = build_graph(roster, 4), build_graph(roster, 4)
    assert a != b  # a fresh secure relabelling each time
    full = build_graph(roster, 0)
    assert all(len(v) == 29 for v in full.values())
    assert build_graph(roster[:4], 4) == {u: [v for v in roster[:4] if v != u] for u in roster[:4]}
    with pytest.raises(ConfigValueError, match="secagg_neighbors"):
        build_graph(roster, 3)


def test_thresholds_and_recommended_degree():
    assert share_threshold(10, 0.6) == 6 and share_threshold(21, 0.6) == 13
    assert share_threshold(2, 0.51) == 2 and share_threshold(3, 1.0) == 3
    assert recommended_neighbors(1000) == 20 and recommended_neighbors(100) == 14
    assert recommended_neighbors(5) % 2 == 0 and recommended_neighbors(5) < 5


def test_auto_degree_is_logarithmic():
    from securefl.crypto.secagg.common import SecAggSettings

    s = SecAggSettings(neighbors=-1)
    assert s.degree(1000) == 20 and s.degree(100) == 14 and s.degree(5) == 4 and s.degree(3) == 2
    assert s.threshold_for(1000) == 13  # relative to the k + 1 holders, not to n
    with pytest.raises(ConfigValueError, match="secagg_neighbors"):
        SecAggSettings(neighbors=-2)
