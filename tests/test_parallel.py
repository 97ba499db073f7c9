"""Parallel clients (``workers``): the same run as the serial one, bit for bit.

With ``reproducible_noise`` every client draws its DP noise from its own seeded
stream, so running a stage's clients on threads changes nothing but wall times and
the order of a round's entries in the shared ledger. Secure aggregation's
stochastic rounding is keyed from ``os.urandom`` by design (two serial runs differ
in it too), so these tests fix that key; its masks cancel exactly. CKKS's own
encryption noise makes two runs differ within the scheme's error.
"""

import pytest
import torch

from securefl.build import build
from securefl.config import RunConfig
from securefl.crypto import quantize
from securefl.models import get_flat
from securefl.privacy.ledger import PrivacyLedger
from securefl.simulation import Simulation
from securefl.protections.threaded import ThreadedExchange

#: ledger fields that depend on when, and in which order, entries were appended
ORDER_FIELDS = ("seq", "time", "prev", "hash")


def _config(workers: int, protect: str, dp: str, **extra) -> RunConfig:
    flat = dict(
        dataset="digits", clients=5, rounds=2, hidden=16, local_steps=3, protect=protect, dp=dp,
        seed=11, reproducible_noise=True, workers=workers, min_clients=2,
    )
    flat.update(extra)
    if dp == "sample":
        flat["epsilon"] = 8.0
    return RunConfig.from_flat(flat)


def _run(tmp_path, workers: int, protect: str, dp: str, **extra):
    out = tmp_path / f"{protect}-{dp}-{workers}"
    sim = Simulation(_config(workers, protect, dp, **extra), out_dir=out)
    if workers > 1:
        assert isinstance(sim.server.exchange_type(1), ThreadedExchange)
    res = sim.run()
    return get_flat(res.server.model), res, PrivacyLedger.load(out / "ledger.json")


def _no_times(value):
    """``value`` without wall times (and the ``workers`` setting itself)."""
    if isinstance(value, dict):
        return {k: _no_times(v) for k, v in value.items() if k not in ("seconds", "workers") and "time" not in k}
    if isinstance(value, list):
        return [_no_times(v) for v in value]
    return value


def _entries(ledger: PrivacyLedger):
    body = [{k: v for k, v in e.items() if k not in ORDER_FIELDS} for e in ledger.entries]
    return sorted(body, key=lambda e: (e["round"], e["subject"]))


@pytest.mark.parametrize(
    "protect, dp, extra",
    [("none", "none", {}), ("none", "sample", {}), ("secagg", "none", {"dropout": 0.2}), ("secagg", "sample", {})],
)
def test_parallel_run_is_the_serial_run(tmp_path, monkeypatch, protect, dp, extra):
    monkeypatch.setattr(quantize, "_coin_key", lambda: bytes(range(32)))
    w1, r1, l1 = _run(tmp_path, 1, protect, dp, **extra)
    w2, r2, l2 = _run(tmp_path, 3, protect, dp, **extra)
    assert torch.equal(w1, w2)
    assert _no_times(r1.metrics) == _no_times(r2.metrics)
    assert [(r.refused, r.dropped, r.bytes_up, r.bytes_down) for r in r1.results] == [
        (r.refused, r.dropped, r.bytes_up, r.bytes_down) for r in r2.results
    ]
    assert _entries(l1) == _entries(l2)  # load() verified both hash chains
    assert len(l2.entries) == (10 if dp == "sample" else 0)
    if extra:
        assert sum(len(r.dropped) for r in r1.results) > 0  # the dropout path was taken


def test_parallel_ckks_run_within_the_scheme_error(tmp_path):
    w1, r1, _ = _run(tmp_path, 1, "ckks", "none", rounds=1)
    w2, r2, _ = _run(tmp_path, 2, "ckks", "none", rounds=1)
    config, weight = _config(1, "ckks", "none"), sum(c.num_samples for c in r1.clients)
    # a client encodes n_k * update / (max_weight * clip) into [-1, 1]; the released sum
    # is off by at most ckks_max_error per slot, so the mean by that times max_weight *
    # clip / sum n_k, in each of the two runs
    p = config.protection
    bound = 2 * p.ckks_max_error * 1000.0 * p.ckks_clip / weight
    assert 0 < float((w1 - w2).abs().max()) <= bound
    assert [(r.refused, r.dropped) for r in r1.results] == [(r.refused, r.dropped) for r in r2.results]
    # compressed ciphertexts differ in size with their randomness
    assert r2.results[0].bytes_up == pytest.approx(r1.results[0].bytes_up, rel=0.01)


def test_build_keeps_the_serial_exchange_by_default():
    fed = build(_config(1, "none", "none"))
    assert type(fed.server.exchange_type(1)) is not ThreadedExchange
