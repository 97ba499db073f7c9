"""F2: nothing computed from a client's private data leaves it outside the DP release.

Every field of every message a client sends is checked against an explicit
allow-list per privacy mode and protection: the CLIENT_UPDATE header and sealed
counters of a real :class:`SecureClient`, and every byte the server receives in a
short real federation under each protection. The finding's attack is then mounted:
two datasets differing in one outlier record must give identical headers under DP.
"""

from __future__ import annotations

from typing import Any, Iterator

import pytest
import torch

from securefl import DPConfig, RunConfig, SecureClient, Simulation
from securefl.models import build_model, get_flat
from securefl.protections import ClientProtection, Plaintext
from securefl.transport import wire

MODES: dict[str, DPConfig] = {
    "none": DPConfig(),
    "sample": DPConfig(dp="sample", noise_multiplier=1.0, clip=1.0),
    "client": DPConfig(dp="client", noise_multiplier=1.0, clip=0.5),
    "client-adaptive": DPConfig(dp="client", noise_multiplier=1.0, clip=0.5, adaptive_clip=True),
}
ROUND_IDS = {"round", "client", "dim"}
#: the client's own header fields; (dp mode, protection reveals the update) -> allowed
HEADER_ALLOWED: dict[tuple[str, bool], set[str]] = {
    ("none", True): ROUND_IDS | {"steps", "loss"},  # the server sees the update and n_k anyway
    ("none", False): ROUND_IDS,
    **{(m, r): ROUND_IDS for m in ("sample", "client", "client-adaptive") for r in (True, False)},
}
#: sealed counters per mode
AUX_ALLOWED = {"none": {"weight"}, "sample": {"weight"}, "client": {"weight"}, "client-adaptive": {"weight", "unclipped"}}
#: what each protection adds to the update message it puts on the wire (protocol, not data)
PROTECTION_FIELDS = {
    "none": {"protect", "aux"},
    "ckks": {"protect", "settings", "fingerprint", "aux_keys"},
    "secagg": {"round", "client", "dim", "bits", "aux"},
}
#: never on the wire under DP, in any message, at any depth
DATA_FIELDS = {"loss", "steps", "epsilon", "num_samples", "samples", "norm", "accuracy"}


class Hiding(ClientProtection):
    """A protection that hides the update; records what the client gives it."""

    name = "hiding"

    def seal(self, weighted_update: torch.Tensor, aux: dict[str, float], header: dict[str, Any]) -> bytes:
        self.sealed = (weighted_update.clone(), dict(aux), dict(header))
        return wire.encode(wire.Kind.CLIENT_UPDATE, {**header, "protect": self.name}, b"")


def _model_fn(digits):
    return lambda: build_model("logreg", digits.input_shape, 10, seed=0)


def _global(weights: torch.Tensor, round_: int, dp: DPConfig) -> bytes:
    header: dict[str, Any] = {"round": round_, "dim": weights.numel()}
    if dp.dp == "client":
        header["client_clip"] = dp.clip
    return wire.encode(wire.Kind.GLOBAL_MODEL, header, wire.vector_to_bytes(weights))


def _fit(digits, x, y, mode: str, protection: ClientProtection) -> tuple[dict[str, Any], dict[str, float]]:
    """One real fit; returns (the client's header, the sealed counters)."""
    dp = MODES[mode]
    client = SecureClient("client-0", x, y, model_fn=_model_fn(digits), dp=dp, protection=protection)
    raw = client.fit(_global(get_flat(_model_fn(digits)()), 1, dp))
    msg = wire.decode(raw, expect=wire.Kind.CLIENT_UPDATE)
    if isinstance(protection, Hiding):
        return {k: v for k, v in msg.header.items() if k != "protect"}, protection.sealed[1]
    return {k: v for k, v in msg.header.items() if k not in ("protect", "aux")}, msg.header["aux"]


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("protect", ["plaintext", "hiding"])
def test_every_field_of_a_client_update_is_allowed(digits, digits_parts, mode, protect):
    idx = digits_parts[0]
    protection = Plaintext() if protect == "plaintext" else Hiding()
    header, aux = _fit(digits, digits.x_train[idx], digits.y_train[idx], mode, protection)
    assert set(header) <= HEADER_ALLOWED[(mode, protection.reveals_update)], header
    assert set(aux) == AUX_ALLOWED[mode], aux
    if mode == "none":
        assert aux["weight"] == len(idx)  # sample-weighted FedAvg, unchanged without DP
    else:
        assert aux["weight"] == 1.0  # uniform FedAvg: n_k is a count of private records
    if mode == "client-adaptive":
        assert aux["unclipped"] in (0.0, 1.0)


def _outlier_pair(digits, idx) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """A client's dataset, and the same with one extreme, mislabelled record added."""
    x, y = digits.x_train[idx], digits.y_train[idx]
    outlier = torch.full_like(x[:1], 50.0)
    return (x, y), (torch.cat([x, outlier]), torch.cat([y, (y[:1] + 1) % 10]))


@pytest.mark.parametrize("mode", ["sample", "client", "client-adaptive"])
@pytest.mark.parametrize("protect", ["plaintext", "hiding"])
def test_one_outlier_record_leaves_no_trace_outside_the_release(digits, digits_parts, mode, protect):
    (xa, ya), (xb, yb) = _outlier_pair(digits, digits_parts[0])
    make = Plaintext if protect == "plaintext" else Hiding
    ha, aux_a = _fit(digits, xa, ya, mode, make())
    hb, aux_b = _fit(digits, xb, yb, mode, make())
    drop = lambda h: {k: v for k, v in h.items() if k not in ("round", "client")}  # noqa: E731
    assert drop(ha) == drop(hb)
    if mode != "client-adaptive":  # the unclipped bit is noised and charged; the weight is not
        assert aux_a == aux_b


def test_without_dp_the_outlier_is_visible_in_the_plaintext_header(digits, digits_parts):
    """The attack of the finding, where nothing claims to stop it: the loss differs."""
    (xa, ya), (xb, yb) = _outlier_pair(digits, digits_parts[0])
    ha, aux_a = _fit(digits, xa, ya, "none", Plaintext())
    hb, aux_b = _fit(digits, xb, yb, "none", Plaintext())
    assert ha["loss"] != hb["loss"] and aux_a["weight"] + 1 == aux_b["weight"]


# ------------------------------------------------------------ whole transcripts
def _walk(obj: Any) -> Iterator[str]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield str(k)
            yield from _walk(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk(v)


def _record(sim: Simulation) -> tuple[list[wire.Message], list[dict[str, float]]]:
    """Wrap every client so that every byte the server receives is decoded and kept,
    together with the counters each client hands its protection to seal."""
    received: list[wire.Message] = []
    sealed: list[dict[str, float]] = []
    for client in sim.clients:
        for method in ("fit", "handle"):
            inner = getattr(client, method)

            def wrapped(message: bytes, inner=inner) -> bytes:
                reply = inner(message)
                received.append(wire.decode(reply))
                return reply

            setattr(client, method, wrapped)
        seal = client.protection.seal

        def recording_seal(update, aux, header, seal=seal):
            sealed.append(dict(aux))
            return seal(update, aux, header)

        client.protection.seal = recording_seal  # type: ignore[method-assign]
    return received, sealed


UPDATE_KINDS = {wire.Kind.CLIENT_UPDATE, wire.Kind.SECAGG_MASKED_INPUT}


@pytest.mark.parametrize("mode", ["none", "sample", "client"])
@pytest.mark.parametrize("protect", ["none", "ckks", "secagg"])
def test_every_byte_the_server_receives_is_allowed(mode, protect):
    dp = MODES[mode]
    flat = {"dataset": "digits", "clients": 4, "rounds": 2, "model": "logreg", "protect": protect, "dp": dp.dp}
    if dp.enabled:
        flat.update(noise_multiplier=1.0, clip=dp.clip)
    sim = Simulation(RunConfig.from_flat(flat))
    received, sealed = _record(sim)
    result = sim.run()
    assert not any(r.aborted for r in result.results)
    updates = [m for m in received if m.kind in UPDATE_KINDS]
    assert len(updates) == 4 * 2
    reveals = protect == "none"
    allowed = HEADER_ALLOWED[(mode, reveals)] | PROTECTION_FIELDS[protect]
    for m in updates:
        assert set(m.header) <= allowed, m.header
    assert len(sealed) == 8 and all(set(aux) == AUX_ALLOWED[mode] for aux in sealed)
    if dp.enabled:
        assert all(aux["weight"] == 1.0 for aux in sealed)
        for m in received:
            assert not DATA_FIELDS & set(_walk(m.header)), (m.kind.name, m.header)
        for m in updates:  # the counter names on the wire: the weight only
            names = m.header.get("aux_keys", m.header.get("aux"))
            assert names in ([], ["weight"], {"weight": 1.0}), names
