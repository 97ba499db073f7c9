"""The secure-aggregation section of ``securefl bench``: client masking against a
plain AES-CTR reference, server unmasking on the complete graph (Bonawitz et al.,
CCS 2017) and the growth of the SecAgg+ server with n (Bell et al., CCS 2020).

* Client masking runs the real :class:`~securefl.crypto.secagg.client.SecAggClient`
  through stages 1-3 of a real round (keys, encrypted shares) and times
  ``masked_input`` on a ``d``-vector; beside it, in the same process and
  interleaved with it, the reference produces the same number of AES-256-CTR
  keystream bytes with ``cryptography``'s CTR mode (one fresh key per mask, no
  arithmetic); the masking takes the same bytes from the faster GCM code
  (:mod:`securefl.crypto.secagg.masking`), so it can come in below it.
* The server runs the real :class:`~securefl.crypto.secagg.server.SecAggServer` on
  real wire messages for every stage. The clients' replies are built directly
  (their costly stage-2 work is skipped): keys are real X25519 keys; share
  ciphertexts, which the server only routes, are empty; masked inputs carry real
  self masks and real pairwise masks with dropped clients (those with survivors
  are replaced by random vectors that sum to zero, as pairwise masks do); the
  Shamir shares each reveal lie on a random polynomial of degree ``t - 1`` with
  the right secret (one random polynomial per holder set, shifted per secret).
  The decoded sum is checked against the plaintext sum.

Times are medians of repeats, CPU (``time.process_time``) and wall; the machine's
load average is recorded before and after.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any, Callable, Sequence

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from securefl.bench import timing
from securefl.crypto import primitives as P
from securefl.crypto import shamir
from securefl.crypto.encoding import b64
from securefl.crypto.secagg.client import SecAggClient
from securefl.crypto.secagg.common import SecAggSettings, pair_info, pair_mask_info, self_mask_info
from securefl.crypto.secagg.server import SecAggServer
from securefl.privacy.noise import SecureRNG
from securefl.transport import wire

#: targets from issue 15 (CPU time on the reference 2-core machine)
TARGETS = {"client_masking_ms": 65.0, "server_unmask_n300_s": 0.3}
_CHUNK = 1 << 17


def machine() -> dict[str, Any]:
    """Platform, core count and the load average now (other processes distort wall time)."""
    return timing.machine()


def _timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return time.process_time() - c0, time.perf_counter() - t0, out


def _med(values: Sequence[float], scale: float = 1.0, digits: int = 3) -> float:
    return round(scale * statistics.median(values), digits)


def _clear_shamir_caches() -> None:
    """Forget every cached Lagrange/weight table (each measurement starts cold)."""
    for name in dir(shamir):
        clear = getattr(getattr(shamir, name), "cache_clear", None)
        if callable(clear):
            clear()


def _settings(k: int) -> SecAggSettings:
    return SecAggSettings(clip=1.0, max_weight=1.0, threshold=0.6, neighbors=k)


def aes_ctr_reference(masks: int, nbytes: int) -> None:
    """``masks`` AES-256-CTR keystreams of ``nbytes`` each (fresh key per stream), in
    cache-sized chunks into one buffer: the raw cost of the masks' bytes."""
    zeros = bytes(min(_CHUNK, nbytes))
    out = bytearray(len(zeros) + 16)
    for _ in range(masks):
        enc = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(bytes(16))).encryptor()
        for start in range(0, nbytes, len(zeros)):
            size = min(len(zeros), nbytes - start)
            enc.update_into(zeros if size == len(zeros) else zeros[:size], out)


def flower_reference(masks: int, update: np.ndarray) -> Callable[[], Any] | None:
    """Flower's SecAgg+ client masking stage on the same vector (its own functions,
    in the order its ``secaggplus_mod`` calls them: quantize, one ECDH + HKDF and
    one seeded numpy mask per peer, the private mask, the modulus, serialization;
    its default ranges), or None without ``flwr``."""
    try:
        from flwr.common import ndarray_to_bytes
        from flwr.common.secure_aggregation import ndarrays_arithmetic as A
        from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
        from flwr.common.secure_aggregation.quantization import quantize
        from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
        from flwr.supercore.primitives import asymmetric as K
    except ImportError:
        return None
    sk = K.private_key_to_bytes(K.generate_key_pairs()[0])
    peers = [K.public_key_to_bytes(K.generate_key_pairs()[1]) for _ in range(masks - 1)]
    params = [update.astype(np.float32)]
    target, modulus = 4194304, 1 << 32

    def run() -> list[bytes]:
        q = A.factor_combine(target, quantize(A.parameters_multiply(params, 1.0), 8.0, target))
        dims = [a.shape for a in q]
        q = A.parameters_addition(q, pseudo_rand_gen(os.urandom(32), modulus, dims))
        for i, pk in enumerate(peers):
            key = generate_shared_key(K.bytes_to_private_key(sk), K.bytes_to_public_key(pk))
            mask = pseudo_rand_gen(key, modulus, dims)
            q = A.parameters_addition(q, mask) if i % 2 else A.parameters_subtraction(q, mask)
        return [ndarray_to_bytes(a) for a in A.parameters_mod(q, modulus)]

    return run


# ------------------------------------------------------------------ client masking
def _ready_clients(n: int, k: int, count: int, dim: int) -> list[SecAggClient]:
    """``count`` clients of a real n-client round, each ready to send its masked input."""
    settings = _settings(k)
    ids = [f"c{i:04d}" for i in range(n)]
    server = SecAggServer(1, ids, settings=settings)
    clients = {u: SecAggClient(u, settings=settings, rng=SecureRNG()) for u in ids}
    u1 = server.collect_keys({u: clients[u].handle(server.advertise_request(u)) for u in ids})
    u2 = server.collect_shares({u: clients[u].handle(server.share_request(u)) for u in u1})
    gm = wire.encode(wire.Kind.GLOBAL_MODEL, {"round": 1, "dim": dim})
    for u in u2[:count]:
        clients[u].receive(wire.decode(server.masking_message(u, gm)).header)
    return [clients[u] for u in u2[:count]]


def client_masking(
    n: int = 100, k: int = 0, dim: int = 1_000_000, repeats: int = 5, with_flower: bool = True
) -> dict[str, Any]:
    """CPU/wall time of one client's ``masked_input`` (encoding + masks) at ``n``
    clients (``k`` = 0: complete graph) beside the AES-CTR reference and, when
    ``flwr`` is installed, Flower's SecAgg+ masking of the same vector."""
    clients = _ready_clients(n, k, repeats, dim)
    update = np.random.default_rng(0).uniform(-1, 1, dim)  # benchmark data, not secret
    peers = len(clients[0]._rounds[1].maskers)
    nbytes = 4 * (dim + 2)  # d values, the weight, the clipped count (32-bit ring)
    mask_cpu, mask_wall, ref_cpu, ref_wall, enc_cpu, flower_cpu = [], [], [], [], [], []
    codec = clients[0]._rounds[1].codec
    flower = flower_reference(peers + 1, update) if with_flower else None
    for c in clients:
        for cpus, walls, fn in (
            (mask_cpu, mask_wall, lambda: c.masked_input(update, 1.0, {"weight": 1.0}, {"round": 1})),
            (ref_cpu, ref_wall, lambda: aes_ctr_reference(peers + 1, nbytes)),
        ):
            cpu, wall, _ = _timed(fn)
            cpus.append(cpu)
            walls.append(wall)
        enc_cpu.append(_timed(lambda: codec.encode(update))[0])
        if flower is not None:
            flower_cpu.append(_timed(flower)[0])
    return {
        "clients": n,
        "graph": "complete" if k == 0 else "secagg+",
        "masks": peers + 1,
        "dim": dim,
        "repeats": len(clients),
        "cpu_ms": _med(mask_cpu, 1e3, 2),
        "wall_ms": _med(mask_wall, 1e3, 2),
        "aes_ref_cpu_ms": _med(ref_cpu, 1e3, 2),
        "aes_ref_wall_ms": _med(ref_wall, 1e3, 2),
        "ratio_to_aes_cpu": round(statistics.median(mask_cpu) / statistics.median(ref_cpu), 3),
        "encode_cpu_ms": _med(enc_cpu, 1e3, 2),
        "flower_cpu_ms": _med(flower_cpu, 1e3, 2) if flower_cpu else None,
        "target_cpu_ms": TARGETS["client_masking_ms"],
    }


# ------------------------------------------------------------------ server rounds
def _share_table(server: SecAggServer, secrets: dict[str, int], holders_of: Callable[[str], list[str]]) -> dict:
    """``table[v][u]``: the base64 share of ``secrets[v]`` held by ``u`` (threshold t)."""
    base: dict[tuple[int, ...], list[shamir.Share]] = {}
    table: dict[str, dict[str, str]] = {}
    for v, s in secrets.items():
        holders = holders_of(v)
        xs = tuple(server._x(h) for h in holders)
        if xs not in base:
            base[xs] = shamir.split(0, list(xs), server.threshold)
        table[v] = {
            h: b64(shamir.Share(sh.x, (sh.y + s) % shamir.PRIME).to_bytes()) for h, sh in zip(holders, base[xs])
        }
    return table


def _masked_inputs(server: SecAggServer, keys: dict, seeds: dict, dropped: set, update: np.ndarray) -> dict:
    codec, ids = server.codec, server.roster
    survivors = [u for u in ids if u not in dropped]
    dim = update.size
    base = np.concatenate([codec.encode(np.append(update, 1.0)).values, np.zeros(1, codec.dtype)])
    zero_sum = np.zeros_like(base)
    out = {}
    for i, u in enumerate(survivors):
        vec = base.copy()
        P.add_mask(vec, seeds[u], self_mask_info(1, u))
        for v in server.graph[u]:
            if v in dropped:
                seed = P.agree(keys[u][0], keys[v][1], pair_info(1))
                P.add_mask(vec, seed, pair_mask_info(1), subtract=u > v)
        if i < len(survivors) - 1:
            r = np.frombuffer(os.urandom(vec.nbytes), dtype=vec.dtype)
            zero_sum += r
        else:
            r = np.zeros_like(vec) - zero_sum
        vec += r
        header = {"round": 1, "client": u, "aux": ["weight"], "dim": dim, "bits": codec.bits}
        out[u] = wire.encode(wire.Kind.SECAGG_MASKED_INPUT, header, vec.astype(f"<u{codec.bits // 8}").tobytes())
    return out


def _round_messages(server: SecAggServer, dropped: set, update: np.ndarray) -> dict[str, dict]:
    """Every client reply of one round (see the module docstring)."""
    ids, graph = server.roster, server.graph
    keys = {u: P.x25519_keypair() for u in ids}
    seeds = {u: os.urandom(32) for u in ids}
    survivors = [u for u in ids if u not in dropped]
    msg = {"keys": {}, "shares": {}}
    for u in ids:
        h = {"round": 1, "client": u, "c_pk": b64(os.urandom(32)), "s_pk": b64(keys[u][1])}
        msg["keys"][u] = wire.encode(wire.Kind.SECAGG_KEYS, h)
        h = {"round": 1, "client": u, "shares": {v: "" for v in graph[u]}}
        msg["shares"][u] = wire.encode(wire.Kind.SECAGG_SHARES, h)
    msg["masked"] = _masked_inputs(server, keys, seeds, dropped, update)
    holders = lambda v: [*graph[v], v]  # noqa: E731 - every neighbour advertised and shared
    b = _share_table(server, {u: shamir.secret_to_int(seeds[u]) for u in survivors}, holders)
    drop_live = [v for v in dropped if any(u not in dropped for u in graph[v])]
    sk = _share_table(server, {v: shamir.secret_to_int(keys[v][0]) for v in drop_live}, holders)
    msg["unmask"] = {}
    for u in survivors:
        h = {
            "round": 1,
            "client": u,
            "b": {v: b[v][u] for v in [*graph[u], u] if v not in dropped},
            "sk": {v: sk[v][u] for v in graph[u] if v in sk},
        }
        msg["unmask"][u] = wire.encode(wire.Kind.SECAGG_UNMASK, h)
    return msg


def _dropouts(server: SecAggServer, count: int, scenario: np.random.Generator) -> set[str]:
    """``count`` clients that vanish after sharing, drawn so the round can finish
    (every secret the unmasking needs keeps ``t`` live holders; a SecAgg+ graph
    can otherwise lose a whole neighbourhood, and the round aborts)."""
    t, graph = server.threshold, server.graph
    for _ in range(1000):
        dropped = set(scenario.choice(server.roster, size=count, replace=False).tolist())
        live = [u for u in server.roster if u not in dropped]
        if all(len([v for v in graph[u] if v not in dropped]) + 1 >= t for u in live) and all(
            len([u for u in graph[v] if u not in dropped]) >= t for v in dropped
        ):
            return dropped
    raise RuntimeError(f"no dropout pattern of {count} clients lets the round finish")


def server_round(n: int, k: int, dim: int, dropout: float, unmask_repeats: int = 1) -> dict[str, Any]:
    """One server round at ``n`` clients, a fraction ``dropout`` of them gone after
    sharing keys (the expensive case); every stage timed, the unmasking
    ``unmask_repeats`` times (each cold: Shamir caches cleared)."""
    server = SecAggServer(1, [f"c{i:04d}" for i in range(n)], settings=_settings(k))
    scenario = np.random.default_rng(n)  # benchmark data: who drops and the update, not secret
    dropped = _dropouts(server, int(round(dropout * n)), scenario)
    update = scenario.uniform(-1, 1, dim)
    msg = _round_messages(server, dropped, update)
    _clear_shamir_caches()
    stages: dict[str, float] = {}
    stages["collect_keys"] = _timed(lambda: server.collect_keys(msg["keys"]))[0]
    stages["collect_shares"] = _timed(lambda: server.collect_shares(msg["shares"]))[0]
    stages["collect_masked"] = _timed(lambda: server.collect_masked(msg["masked"], dim))[0]
    cpu, wall = [], []
    result = None
    for _ in range(max(1, unmask_repeats)):
        _clear_shamir_caches()
        server.unmaskers = []
        c, w, result = _timed(lambda: server.collect_unmask(msg["unmask"]))
        cpu.append(c)
        wall.append(w)
    stages["collect_unmask"] = statistics.median(cpu)
    expected = update * (n - len(dropped))
    return {
        "clients": n,
        "neighbors": len(server.graph[server.roster[0]]),
        "graph": "complete" if k == 0 else "secagg+",
        "threshold": server.threshold,
        "dim": dim,
        "dropped": len(dropped),
        "unmask_cpu_s": _med(cpu, 1.0, 4),
        "unmask_wall_s": _med(wall, 1.0, 4),
        "unmask_repeats": len(cpu),
        "server_cpu_s": round(sum(stages.values()), 4),
        "stage_cpu_s": {name: round(v, 4) for name, v in stages.items()},
        "max_abs_error": float(np.abs(result.total - expected).max()),
        "error_bound": n * server.codec.resolution,
    }


def secagg_plus_growth(ns: Sequence[int], dim: int, dropout: float, repeats: int) -> dict[str, Any]:
    """Server CPU time (all stages, median of ``repeats`` rounds) of SecAgg+ with
    k = O(log n) against n, and the fitted log-log exponent (n log n over the same
    range is printed beside it)."""
    points = []
    for n in ns:
        runs = [server_round(n, -1, dim, dropout) for _ in range(repeats)]
        points.append({
            "clients": n,
            "neighbors": runs[0]["neighbors"],
            "server_cpu_s": _med([r["server_cpu_s"] for r in runs], 1.0, 4),
            "unmask_cpu_s": _med([r["unmask_cpu_s"] for r in runs], 1.0, 4),
            "max_abs_error": max(r["max_abs_error"] for r in runs),
        })
    logn = np.log([p["clients"] for p in points])
    slope = float(np.polyfit(logn, np.log([p["server_cpu_s"] for p in points]), 1)[0])
    nlogn = float(np.polyfit(logn, np.log(np.exp(logn) * logn), 1)[0])
    return {"dim": dim, "dropout": dropout, "repeats": repeats, "points": points,
            "exponent": round(slope, 3), "n_log_n_exponent": round(nlogn, 3)}


def run(quick: bool = False) -> dict[str, Any]:
    """The whole section (``quick``: fewer repeats and sizes; no dropout or n=1000
    complete-graph rounds)."""
    before = machine()
    reps = 3 if quick else 5
    masking = [client_masking(100, 0, 1_000_000, reps)]
    if not quick:
        masking.append(client_masking(1000, -1, 1_000_000, reps))
    complete = [server_round(300, 0, 10_000, 0.0, reps)]
    if not quick:  # with dropouts, and n=1000: tens of seconds of set-up each
        complete += [server_round(300, 0, 10_000, 0.1, reps), server_round(1000, 0, 10_000, 0.0, 3)]
        complete.append(server_round(1000, 0, 10_000, 0.1, 1))
    ns = (100, 300, 1000) if quick else (100, 200, 400, 700, 1000)
    growth = secagg_plus_growth(ns, 10_000, 0.1, 1 if quick else 3)
    return {
        "section": "secagg",
        "machine": before,
        "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        "targets": TARGETS,
        "client_masking": masking,
        "server_complete_graph": complete,
        "secagg_plus_growth": growth,
    }


def markdown(result: dict[str, Any]) -> str:
    """The section as Markdown tables (for the README and ``securefl bench``)."""
    lines = ["| clients | graph | masks | d | masking CPU (ms) | AES-CTR ref CPU (ms) | ratio | encode (ms) "
             "| Flower SecAgg+ CPU (ms) | wall (ms) |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["client_masking"]:
        flower = "n/a" if r.get("flower_cpu_ms") is None else r["flower_cpu_ms"]
        lines.append(f"| {r['clients']} | {r['graph']} | {r['masks']} | {r['dim']:,} | {r['cpu_ms']} | "
                     f"{r['aes_ref_cpu_ms']} | {r['ratio_to_aes_cpu']} | {r['encode_cpu_ms']} | {flower} | {r['wall_ms']} |")
    lines += ["", "| clients | graph | t | d | dropped | unmask CPU (s) | unmask wall (s) | server CPU, all stages (s) |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["server_complete_graph"]:
        lines.append(f"| {r['clients']} | {r['graph']} | {r['threshold']} | {r['dim']:,} | {r['dropped']} | "
                     f"{r['unmask_cpu_s']} | {r['unmask_wall_s']} | {r['server_cpu_s']} |")
    g = result["secagg_plus_growth"]
    lines += ["", "| clients (SecAgg+) | k | server CPU, all stages (s) | unmask CPU (s) |", "| --- | --- | --- | --- |"]
    for p in g["points"]:
        lines.append(f"| {p['clients']} | {p['neighbors']} | {p['server_cpu_s']} | {p['unmask_cpu_s']} |")
    lines += ["", f"Fitted exponent of SecAgg+ server CPU time against n: {g['exponent']} "
              f"(n log n over the same range: {g['n_log_n_exponent']}). Load average "
              f"{result['machine']['loadavg']} before, {result['loadavg_after']} after."]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: str) -> None:
    """Two panels: SecAgg+ server CPU time against n (log-log, with the fit) and
    client masking against the AES-CTR reference."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    g = result["secagg_plus_growth"]
    ns = [p["clients"] for p in g["points"]]
    left.loglog(ns, [p["server_cpu_s"] for p in g["points"]], "o-", label=f"server, all stages (slope {g['exponent']})")
    left.loglog(ns, [p["unmask_cpu_s"] for p in g["points"]], "s--", label="unmasking")
    left.set(xlabel="clients n (SecAgg+, k = O(log n))", ylabel="CPU seconds", title=f"SecAgg+ server, d={g['dim']:,}")
    left.legend()
    rows = result["client_masking"]
    labels = [f"n={r['clients']}\n{r['masks']} masks" for r in rows]
    x = np.arange(len(rows))
    right.bar(x - 0.2, [r["cpu_ms"] for r in rows], 0.4, label="securefl masking")
    right.bar(x + 0.2, [r["aes_ref_cpu_ms"] for r in rows], 0.4, label="AES-CTR keystream only")
    right.set_xticks(x, labels)
    right.set(ylabel="CPU ms per client", title=f"client masking, d={rows[0]['dim']:,}")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
