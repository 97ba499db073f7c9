"""Empirical privacy auditing: attack-based lower bounds on epsilon.

An accountant gives an *upper* bound on the epsilon of a run. An audit gives a
*lower* bound: an attacker's measured success that no (epsilon, delta)-DP
mechanism could reach with smaller epsilon, except with probability
``1 - confidence``. A lower bound above the upper bound proves a bug (in the
mechanism, the accountant or the ledger); a lower bound far below it says how
much room the analysis leaves for the attacks tried here, nothing more.

Three audits are offered:

* **One run** (Steinke, Nasr and Jagielski, "Privacy Auditing with One (1)
  Training Run", NeurIPS 2023): ``m`` canaries are each included independently
  with probability 1/2, one training run is made, every canary gets a score,
  the attacker guesses "in" for the ``k+`` highest scores, "out" for the ``k-``
  lowest and abstains on the rest. Of ``r = k+ + k-`` guesses, ``v`` are right.
  Their Theorem 3.1 bounds ``P[W >= v]`` for an (epsilon, delta)-DP mechanism by
  ``f(v) + 2 m delta max_i (f(v - i) - f(v)) / i`` with
  ``f(v) = P[Binomial(r, e^eps / (1 + e^eps)) >= v]``; the lower bound is the
  smallest epsilon that this p-value does not reject at the confidence.
* **Canary kinds**: *example* canaries (uniform-noise images with random labels,
  or mislabelled training digits, inserted into the clients' data; scored
  black-box by their loss under the final model or white-box by the alignment of
  every round's global step with the canary's gradient), and
  *client* canaries (clients whose update is a fixed random unit direction, scored
  by the cosine between the direction and the final model delta: Andrew, Kairouz,
  Oh, Oprea, McMahan and Suriyakumar, "One-shot Empirical Privacy Estimation for
  Federated Learning", ICLR 2024). For client canaries the Gaussian fit of
  Andrew et al. is also reported, as an *estimate* (not a bound).
* **Two hypotheses** (the classic audit, e.g. Jagielski, Ullman and Oprea 2020):
  run a small mechanism many times on neighbouring inputs, threshold a score, and
  turn Clopper-Pearson bounds on the false-positive and false-negative rates into
  ``eps >= log((1 - delta - FNR) / FPR)``.

Randomness: which canaries are included is the audit's secret coin. It comes
from :class:`~securefl.privacy.noise.SecureRNG` keyed from ``--seed`` with HKDF
(``SecureRNG.from_seed(seed, "audit-inclusion")``), so an audit can be repeated
exactly and a reviewer can re-derive the coins; the scoring code never reads
them. Canary images, labels and directions come from the same keyed generator
under other contexts. The DP noise of the run is the library's own secure noise
(fresh ``os.urandom`` keys) unless the run asks for ``--reproducible-noise``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import special, stats

from securefl.exceptions import ClientDropout, ConfigValueError
from securefl.models import get_flat
from securefl.privacy.noise import SecureRNG
from securefl.transport import wire

# ----------------------------------------------------------------------------
# One-run auditing: the binomial-tail bound (Steinke, Nasr, Jagielski 2023)
# ----------------------------------------------------------------------------


def _check_counts(canaries: int, guesses: int, correct: int) -> None:
    if isinstance(canaries, bool) or not isinstance(canaries, (int, np.integer)) or canaries < 1:
        raise ConfigValueError("canaries", canaries, "must be an integer >= 1")
    if not 0 <= guesses <= canaries:
        raise ConfigValueError("guesses", guesses, f"must be between 0 and canaries={canaries}")
    if not 0 <= correct <= guesses:
        raise ConfigValueError("correct", correct, f"must be between 0 and guesses={guesses}")


def _check_level(name: str, value: float, *, closed_low: bool) -> None:
    ok = (0 <= value < 1) if closed_low else (0 < value < 1)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok:
        raise ConfigValueError(name, value, f"must be in {'[0, 1)' if closed_low else '(0, 1)'}")


def _p_values(canaries: int, guesses: int, correct: int, epsilons: np.ndarray, delta: float) -> np.ndarray:
    """:func:`one_run_p_value` at every epsilon of a 1-d array (vectorised)."""
    r, v = int(guesses), int(correct)
    if v == 0:
        return np.ones(len(epsilons))
    p = special.expit(np.asarray(epsilons, dtype=np.float64))[:, None]
    tail = stats.binom.sf(v - 1, r, p[:, 0])  # f(v) = P[B >= v]
    if delta == 0:
        return np.minimum(1.0, tail)
    # f(v - i) - f(v) = P[v - i <= B <= v - 1] for i = 1..v: pmf(v-1) + ... + pmf(v-i)
    k = np.arange(v - 1, -1, -1, dtype=np.float64)[None, :]
    log_choose = special.gammaln(r + 1) - special.gammaln(k + 1) - special.gammaln(r - k + 1)
    pmf = np.exp(log_choose + special.xlogy(k, p) + special.xlog1py(r - k, -p))
    alpha = np.max(np.cumsum(pmf, axis=1) / np.arange(1, v + 1)[None, :], axis=1)
    return np.minimum(1.0, tail + 2.0 * canaries * delta * alpha)


def one_run_p_value(*, canaries: int, guesses: int, correct: int, epsilon: float, delta: float) -> float:
    """Upper bound on ``P[W >= correct]`` for an (epsilon, delta)-DP mechanism
    (Steinke, Nasr, Jagielski 2023, Thm. 3.1): ``f(v) + 2 m delta max_i (f(v-i) - f(v))/i``
    with ``f(v) = P[Binomial(r, e^eps/(1+e^eps)) >= v]``; capped at 1."""
    _check_counts(canaries, guesses, correct)
    _check_level("delta", delta, closed_low=True)
    return float(_p_values(canaries, guesses, correct, np.array([float(epsilon)]), delta)[0])


def one_run_epsilon_lower_bound(
    *, canaries: int, guesses: int, correct: int, delta: float, confidence: float = 0.95, eps_max: float = 60.0
) -> float:
    """The smallest epsilon the one-run test does not reject at ``confidence``:
    every smaller epsilon would make ``correct`` right guesses out of ``guesses``
    less likely than ``1 - confidence``. 0 when nothing is rejected.

    Scans a grid of step 0.01 for the first epsilon that is not rejected (so the
    bound stays sound even where the p-value is not monotone in epsilon) and
    refines the last step by bisection, returning the rejected end."""
    _check_counts(canaries, guesses, correct)
    _check_level("confidence", confidence, closed_low=False)
    _check_level("delta", delta, closed_low=True)
    beta = 1.0 - confidence

    def rejected(eps: float) -> bool:
        return bool(_p_values(canaries, guesses, correct, np.array([eps]), delta)[0] < beta)

    if not rejected(0.0):
        return 0.0
    step, chunk = 0.01, 256
    lo = 0.0
    while lo < eps_max:
        grid = lo + step * np.arange(1, chunk + 1)
        ok = _p_values(canaries, guesses, correct, grid, delta) < beta
        if not ok.all():
            first = int(np.argmin(ok))  # first grid point not rejected
            lo = float(grid[first - 1]) if first > 0 else lo
            break
        lo = float(grid[-1])
    else:
        return eps_max
    hi = lo + step
    for _ in range(30):
        mid = (lo + hi) / 2
        if rejected(mid):
            lo = mid
        else:
            hi = mid
    return lo


@dataclass(frozen=True)
class OneRunResult:
    """The outcome of a one-run audit (what the JSON reports)."""

    epsilon_lower_bound: float
    delta: float
    confidence: float
    canaries: int
    guesses: int
    correct: int
    k_pos: int
    k_neg: int
    candidates: int  #: guess sizes tried (the confidence is Bonferroni-split among them)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def guess(scores: np.ndarray, k_pos: int, k_neg: int) -> np.ndarray:
    """+1 for the ``k_pos`` highest scores, -1 for the ``k_neg`` lowest, 0 (abstain) else."""
    scores = np.asarray(scores, dtype=np.float64)
    if k_pos + k_neg > len(scores):
        raise ConfigValueError("guesses", k_pos + k_neg, f"more guesses than canaries ({len(scores)})")
    order = np.argsort(-scores, kind="stable")
    out = np.zeros(len(scores), dtype=np.int8)
    out[order[:k_pos]] = 1
    if k_neg:
        out[order[len(scores) - k_neg :]] = -1
    return out


def guess_sizes(canaries: int) -> list[tuple[int, int]]:
    """The ``(k+, k-)`` pairs tried by :func:`one_run_audit` when none is given:
    one-sided and two-sided guesses of a few sizes (fixed before any score is seen)."""
    sizes = [k for k in (10, 20, 50, 100, 200, 300, 500, 1000, 2000, 5000) if 2 * k <= canaries]
    if not sizes:
        sizes = [max(1, canaries // 2)]
    return [(k, 0) for k in sizes] + [(k, k) for k in sizes if 2 * k <= canaries]


def one_run_audit(
    scores: Sequence[float] | np.ndarray,
    included: Sequence[bool] | np.ndarray,
    *,
    delta: float,
    confidence: float = 0.95,
    k_pos: int | None = None,
    k_neg: int = 0,
) -> OneRunResult:
    """One-run lower bound from canary ``scores`` (higher = more likely included).

    With ``k_pos`` given the guess is fixed; otherwise every pair of
    :func:`guess_sizes` is tried at confidence ``1 - (1 - confidence) / pairs``
    (Bonferroni), so picking the best pair afterwards keeps the stated confidence."""
    scores = np.asarray(scores, dtype=np.float64)
    truth = np.where(np.asarray(included, dtype=bool), 1, -1)
    m = len(scores)
    if len(truth) != m:
        raise ConfigValueError("included", len(truth), f"needs one entry per score ({m})")
    if not np.all(np.isfinite(scores)):
        raise ConfigValueError("scores", "non-finite", "every canary score must be finite")
    pairs = [(int(k_pos), int(k_neg))] if k_pos is not None else guess_sizes(m)
    level = 1.0 - (1.0 - confidence) / len(pairs)
    best: OneRunResult | None = None
    for kp, kn in pairs:
        g = guess(scores, kp, kn)
        r = int(np.count_nonzero(g))
        v = int(np.count_nonzero(g * truth > 0))
        eps = one_run_epsilon_lower_bound(canaries=m, guesses=r, correct=v, delta=delta, confidence=level)
        res = OneRunResult(eps, delta, confidence, m, r, v, kp, kn, len(pairs))
        if best is None or res.epsilon_lower_bound > best.epsilon_lower_bound:
            best = res
    assert best is not None
    return best


# ----------------------------------------------------------------------------
# Gaussian mechanisms: exact epsilon, and the one-shot estimate of Andrew et al.
# ----------------------------------------------------------------------------


def gaussian_delta(epsilon: float, mu: float) -> float:
    """delta(epsilon) of a Gaussian mechanism with sensitivity / noise std = ``mu``
    (Balle and Wang, ICML 2018): Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)."""
    if mu <= 0:
        return 0.0
    a = -epsilon / mu + mu / 2
    b = -epsilon / mu - mu / 2
    return float(special.ndtr(a) - math.exp(epsilon + special.log_ndtr(b)))


def gaussian_epsilon(mu: float, delta: float) -> float:
    """The exact epsilon at ``delta`` of a Gaussian mechanism of ratio ``mu``
    (``mu``-GDP; ``mu = 1 / noise_multiplier`` for one release)."""
    _check_level("delta", delta, closed_low=False)
    if mu <= 0 or gaussian_delta(0.0, mu) <= delta:
        return 0.0
    lo, hi = 0.0, 1.0
    while gaussian_delta(hi, mu) > delta:
        lo, hi = hi, hi * 2
    for _ in range(100):
        mid = (lo + hi) / 2
        if gaussian_delta(mid, mu) > delta:
            lo = mid
        else:
            hi = mid
    return hi


def one_shot_estimate(scores_in: np.ndarray, scores_out: np.ndarray, delta: float) -> dict[str, float]:
    """Andrew et al. (ICLR 2024) one-shot estimate: fit Gaussians to the canary
    cosines of inserted and held-out canaries and report the epsilon of the
    Gaussian mechanism that separates them as much (an estimate, not a bound)."""
    scores_in, scores_out = np.asarray(scores_in, float), np.asarray(scores_out, float)
    if len(scores_in) < 2 or len(scores_out) < 2:
        return {"mu": None, "epsilon_estimate": None}  # nothing to fit (JSON has no NaN)
    pooled = math.sqrt((scores_in.var(ddof=1) + scores_out.var(ddof=1)) / 2)
    if not pooled > 0:
        return {"mu": None, "epsilon_estimate": None}
    mu = float((scores_in.mean() - scores_out.mean()) / pooled)
    return {"mu": mu, "epsilon_estimate": gaussian_epsilon(mu, delta)}


# ----------------------------------------------------------------------------
# Classic two-hypothesis audit with Clopper-Pearson bounds
# ----------------------------------------------------------------------------


def clopper_pearson(successes: int, trials: int, confidence: float) -> tuple[float, float]:
    """Exact one-sided ``confidence`` bounds ``(lower, upper)`` on a binomial rate."""
    _check_level("confidence", confidence, closed_low=False)
    if not 0 <= successes <= trials or trials < 1:
        raise ConfigValueError("successes", successes, f"must be between 0 and trials={trials}")
    beta = 1.0 - confidence
    lo = 0.0 if successes == 0 else float(stats.beta.ppf(beta, successes, trials - successes + 1))
    hi = 1.0 if successes == trials else float(stats.beta.ppf(1 - beta, successes + 1, trials - successes))
    return lo, hi


@dataclass(frozen=True)
class TwoHypothesisResult:
    epsilon_lower_bound: float
    delta: float
    confidence: float
    trials: int
    threshold: float
    false_positive_rate: float
    false_negative_rate: float
    fpr_upper: float
    fnr_upper: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _two_hypothesis_bound(fp: int, fn: int, n0: int, n1: int, delta: float, confidence: float) -> tuple[float, float, float]:
    # both rates must hold at once: split 1 - confidence between them
    level = 1.0 - (1.0 - confidence) / 2
    fpr_hi = clopper_pearson(fp, n0, level)[1]
    fnr_hi = clopper_pearson(fn, n1, level)[1]
    cands = [0.0]
    for a, b in ((fnr_hi, fpr_hi), (fpr_hi, fnr_hi)):
        if b > 0 and 1 - delta - a > b:
            cands.append(math.log((1 - delta - a) / b))
    return max(cands), fpr_hi, fnr_hi


def two_hypothesis_audit(
    scores_out: np.ndarray, scores_in: np.ndarray, *, delta: float, confidence: float = 0.95
) -> TwoHypothesisResult:
    """Lower bound from scores of repeated runs without (``scores_out``) and with
    (``scores_in``) the canary. The first half of each set picks the threshold,
    the second half is counted, so the Clopper-Pearson bounds stay exact."""
    s0, s1 = np.asarray(scores_out, float), np.asarray(scores_in, float)
    if len(s0) < 4 or len(s1) < 4:
        raise ConfigValueError("trials", min(len(s0), len(s1)), "need at least 4 runs per hypothesis")
    h0, h1 = len(s0) // 2, len(s1) // 2
    cal0, ev0, cal1, ev1 = s0[:h0], s0[h0:], s1[:h1], s1[h1:]
    best_t, best = float("inf"), -1.0
    for t in np.unique(np.concatenate([cal0, cal1])):
        fp, fn = int((cal0 >= t).sum()), int((cal1 < t).sum())
        eps = _two_hypothesis_bound(fp, fn, len(cal0), len(cal1), delta, confidence)[0]
        if eps > best:
            best_t, best = float(t), eps
    fp, fn = int((ev0 >= best_t).sum()), int((ev1 < best_t).sum())
    eps, fpr_hi, fnr_hi = _two_hypothesis_bound(fp, fn, len(ev0), len(ev1), delta, confidence)
    return TwoHypothesisResult(
        eps, delta, confidence, len(s0) + len(s1), best_t, fp / len(ev0), fn / len(ev1), fpr_hi, fnr_hi
    )


def audit_dp_fedavg_round(
    *, noise_multiplier: float, trials: int, dim: int = 16, clip: float = 1.0, delta: float = 1e-5,
    confidence: float = 0.95, rng: SecureRNG | None = None,
) -> TwoHypothesisResult:
    """Two-hypothesis audit of the library's DP-FedAvg release for one round
    (:func:`securefl.privacy.client_dp.noisy_average`): the sum of updates is
    empty or holds one canary update of norm ``clip``; the score is the
    projection of the noisy average on the canary direction. The true epsilon is
    ``gaussian_epsilon(1 / noise_multiplier, delta)``."""
    from securefl.privacy.client_dp import noisy_average

    rng = rng or SecureRNG()
    direction = torch.zeros(dim, dtype=torch.float64)
    direction[0] = 1.0
    scores = {False: [], True: []}
    for with_canary in (False, True):
        total = direction * clip if with_canary else torch.zeros(dim, dtype=torch.float64)
        for _ in range(trials):
            out = noisy_average(total, noise_multiplier=noise_multiplier, clip=clip, denominator=1.0, rng=rng)
            scores[with_canary].append(float(out @ direction))
    return two_hypothesis_audit(np.array(scores[False]), np.array(scores[True]), delta=delta, confidence=confidence)


# ----------------------------------------------------------------------------
# Canaries in a federated run
# ----------------------------------------------------------------------------

CANARY_KINDS = ("example", "client")
#: scores available per canary kind; the first is the default
SCORES: dict[str, tuple[str, ...]] = {"example": ("loss", "gradient"), "client": ("cosine",)}


@dataclass(frozen=True)
class EmpiricalAuditConfig:
    """Settings of ``securefl audit empirical`` besides the run's own.

    ``kind`` defaults to ``example`` canaries under sample-level DP (the unit
    that DP-SGD protects) and to ``client`` canaries otherwise (client-level DP,
    or no DP, where they give the strongest bound); ``score`` to the kind's
    first score.
    ``k_pos``/``k_neg`` fix the guess; by default a few sizes are tried with a
    Bonferroni-corrected confidence (see :func:`one_run_audit`).
    ``canary_data`` names how example canaries are made (:data:`CANARY_DATA`);
    ``canary_norm`` is the update norm of client canaries when there is no
    client-level clip to follow.
    """

    canaries: int = 1000
    kind: str | None = None
    score: str | None = None
    confidence: float = 0.95
    k_pos: int | None = None
    k_neg: int = 0
    canary_norm: float | None = None
    canary_data: str = "noise"

    def __post_init__(self) -> None:
        if isinstance(self.canaries, bool) or not isinstance(self.canaries, int) or self.canaries < 2:
            raise ConfigValueError("canaries", self.canaries, "must be an integer >= 2")
        if self.kind is not None and self.kind not in CANARY_KINDS:
            raise ConfigValueError("canary_kind", self.kind, f"must be one of {', '.join(CANARY_KINDS)}")
        if self.score is not None and self.score not in {s for v in SCORES.values() for s in v}:
            raise ConfigValueError("score", self.score, "must be loss, gradient or cosine")
        _check_level("confidence", self.confidence, closed_low=False)
        if self.k_pos is not None and not 1 <= self.k_pos + self.k_neg <= self.canaries:
            raise ConfigValueError("k_pos", self.k_pos, f"k_pos + k_neg must be in [1, {self.canaries}]")
        if self.canary_data not in CANARY_DATA:
            raise ConfigValueError("canary_data", self.canary_data, f"must be one of {', '.join(CANARY_DATA)}")
        if self.canary_norm is not None and not self.canary_norm > 0:
            raise ConfigValueError("canary_norm", self.canary_norm, "must be > 0")

    def resolved(self, dp: str) -> "EmpiricalAuditConfig":
        kind = self.kind or ("example" if dp == "sample" else "client")
        score = self.score or SCORES[kind][0]
        if score not in SCORES[kind]:
            raise ConfigValueError("score", score, f"{kind} canaries support {', '.join(SCORES[kind])}")
        if kind == "client" and dp == "sample":
            raise ConfigValueError(
                "canary_kind", kind, "sample-level DP does not bound a whole client's influence; use example canaries"
            )
        return replace(self, kind=kind, score=score)


def example_canaries(
    x_pool: torch.Tensor, y_pool: torch.Tensor, m: int, num_classes: int, rng: SecureRNG
) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """``m`` mislabelled examples: distinct pool images with a label drawn
    uniformly among the wrong classes. Returns the pool indices used (taken out
    of the real data), the images and the canary labels."""
    if m > len(x_pool) - 1:
        raise ConfigValueError("canaries", m, f"example canaries need fewer than {len(x_pool)} training examples")
    if num_classes < 2:
        raise ConfigValueError("dataset", "regression", "example canaries need a classification dataset")
    idx = np.array(rng.sample(len(x_pool), m))[np.argsort(rng.uniform(m))]  # sample() sorts: shuffle
    shift = np.array([1 + rng.below(num_classes - 1) for _ in range(m)])
    labels = (y_pool[idx].numpy() + shift) % num_classes
    return idx, x_pool[idx].clone(), torch.as_tensor(labels, dtype=torch.long)


def noise_canaries(
    x_pool: torch.Tensor, y_pool: torch.Tensor, m: int, num_classes: int, rng: SecureRNG
) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """``m`` out-of-distribution examples: uniform noise over the data's value
    range with a uniformly random label. No real example is taken out."""
    if num_classes < 2:
        raise ConfigValueError("dataset", "regression", "example canaries need a classification dataset")
    lo, hi = float(x_pool.min()), float(x_pool.max())
    u = torch.from_numpy(rng.uniform(m * int(np.prod(x_pool.shape[1:])))).to(x_pool.dtype)
    x = (lo + (hi - lo) * u).reshape(m, *x_pool.shape[1:])
    labels = torch.as_tensor([rng.below(num_classes) for _ in range(m)], dtype=torch.long)
    return np.array([], dtype=np.int64), x, labels


#: how example canaries are made: name -> fn(x_pool, y_pool, m, classes, rng) -> (pool indices used, x, y)
CANARY_DATA: dict[str, Callable[..., tuple[np.ndarray, torch.Tensor, torch.Tensor]]] = {
    "mislabelled": example_canaries,
    "noise": noise_canaries,
}


def random_directions(m: int, dim: int, rng: SecureRNG) -> torch.Tensor:
    """``m`` independent uniformly random unit vectors in R^dim (normalised Gaussians)."""
    g = rng.normal((m, dim), dtype=torch.float64)
    return (g / g.norm(dim=1, keepdim=True)).to(torch.float32)


class CanaryClient:
    """A client-level canary (Andrew et al. 2024): each round it sends its fixed
    unit ``direction`` scaled to the clip norm the server announces (or to
    ``norm`` without client-level DP). An excluded canary is part of the
    population but never answers (it raises :class:`ClientDropout`), so the
    population size, and with it every denominator, does not depend on the coins."""

    def __init__(self, client_id: str, direction: torch.Tensor, *, included: bool, norm: float, weight: float) -> None:
        from securefl.protect import Plaintext

        self.client_id = client_id
        self.direction = direction
        self.included = bool(included)
        self.norm = float(norm)
        self.weight = float(weight)
        self.protection = Plaintext()

    def fit(self, message: bytes) -> bytes:
        if not self.included:
            raise ClientDropout(f"{self.client_id} is an excluded canary")
        msg = wire.decode(message, expect=wire.Kind.GLOBAL_MODEL)
        header = {"round": int(msg.header["round"]), "client": self.client_id, "dim": int(msg.header["dim"]),
                  "loss": 0.0, "steps": 0, "epsilon": None}
        clip = msg.header.get("client_clip")
        if clip is not None:
            return self.protection.seal(self.direction * float(clip), {"weight": 1.0, "unclipped": 1.0}, header)
        return self.protection.seal(self.direction * (self.norm * self.weight), {"weight": self.weight}, header)

    def handle(self, message: bytes) -> bytes:
        return self.protection.handle(message)


def _per_example_grads(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example loss gradients, flattened in :func:`get_flat` order, shape (n, dim)."""
    from torch.func import functional_call, grad, vmap

    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss_one(p, xi, yi):
        return F.cross_entropy(functional_call(model, p, (xi.unsqueeze(0),)), yi.unsqueeze(0))

    g = vmap(grad(loss_one), in_dims=(None, 0, 0))(params, x, y)
    return torch.cat([g[k].reshape(len(x), -1) for k in params], dim=1)


class CanaryScorer:
    """Black-box or final-model scores: loss of example canaries, or cosine of
    client-canary directions with the final model delta (Andrew et al. 2024).
    Higher scores mean "more likely included"."""

    def __init__(self, score: str, model: torch.nn.Module, start: torch.Tensor, *, x: torch.Tensor | None = None,
                 y: torch.Tensor | None = None, directions: torch.Tensor | None = None) -> None:
        self.score, self.model, self.start = score, model, start
        self.x, self.y, self.directions = x, y, directions

    def before_round(self, weights: torch.Tensor) -> None:
        """Called with the global model a round starts from."""

    def after_round(self, weights: torch.Tensor) -> None:
        """Called with the global model the round produced."""

    @torch.no_grad()
    def final(self, weights: torch.Tensor) -> np.ndarray:
        from securefl.models import set_flat

        if self.directions is not None:
            delta = (weights - self.start).double()
            return (self.directions.double() @ delta / max(float(delta.norm()), 1e-300)).numpy()
        set_flat(self.model, weights)
        self.model.eval()
        return -F.cross_entropy(self.model(self.x), self.y, reduction="none").double().numpy()


class GradientAlignmentScorer(CanaryScorer):
    """White-box score of example canaries: the sum over rounds of the cosine
    between the global step and the canary's negative loss gradient at the
    round's starting model (the per-round view of gradient-alignment audits,
    Nasr et al. 2021; Steinke et al. 2023)."""

    def __init__(self, score: str, model: torch.nn.Module, start: torch.Tensor, **kw: Any) -> None:
        super().__init__(score, model, start, **kw)
        self.total = torch.zeros(len(self.x), dtype=torch.float64)

    def before_round(self, weights: torch.Tensor) -> None:
        from securefl.models import set_flat

        set_flat(self.model, weights)
        g = _per_example_grads(self.model, self.x, self.y)
        self._unit = -g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self._prev = weights.clone()

    def after_round(self, weights: torch.Tensor) -> None:
        self.total += (self._unit @ (weights - self._prev)).double()

    def final(self, weights: torch.Tensor) -> np.ndarray:
        return self.total.numpy().copy()


#: score name -> scorer class
SCORERS: dict[str, type[CanaryScorer]] = {
    "loss": CanaryScorer,
    "cosine": CanaryScorer,
    "gradient": GradientAlignmentScorer,
}


def run_empirical_audit(
    run: Any,
    audit: EmpiricalAuditConfig,
    *,
    out_dir: str | Path | None = None,
    on_round: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train one federated run of ``run`` (a :class:`~securefl.config.RunConfig`)
    with canaries, score them and return the audit JSON (also written to
    ``out_dir/audit.json`` with the run's ``ledger.json``)."""
    import time

    from securefl.client import SecureClient
    from securefl.data import load_dataset, partition
    from securefl.models import build_model
    from securefl.privacy.ledger import PrivacyLedger
    from securefl.protect import Plaintext
    from securefl.server import FEDERATION, SecureServer

    t0 = time.perf_counter()
    audit = audit.resolved(run.dp.dp)
    if run.protect != "none":
        raise ConfigValueError(
            "protect", run.protect, "the audit scores the released model; a protection releases the same "
            "aggregate, so audit with --protect none",
        )
    m = audit.canaries
    coins = SecureRNG.from_seed(run.seed, "audit-inclusion")
    included = coins.bernoulli(0.5, m)
    content = SecureRNG.from_seed(run.seed, "audit-canaries")
    data = load_dataset(run.dataset, test_fraction=run.test_fraction, seed=run.seed)
    x_pool, y_pool = data.x_train, data.y_train
    keep = np.arange(len(x_pool))
    if audit.kind == "example":
        used, cx, cy = CANARY_DATA[audit.canary_data](x_pool, y_pool, m, data.num_classes, content)
        keep = np.setdiff1d(keep, used)
    x_real, y_real = x_pool[keep], y_pool[keep]
    parts = partition(y_real, run.clients, method=run.partition, seed=run.seed, alpha=run.alpha,
                      shards_per_client=run.shards_per_client)
    out = Path(out_dir) if out_dir is not None else None
    ledger_path = out / "ledger.json" if out is not None else None
    if ledger_path is not None:
        out.mkdir(parents=True, exist_ok=True)
        if ledger_path.exists():
            ledger_path.unlink()
    ledger = PrivacyLedger(ledger_path, delta=run.dp.delta, budget=run.dp.epsilon, accountant=run.dp.accountant)
    ledger.save()  # a run without DP still leaves a (empty) ledger, as `securefl train` does

    def rng(context: str) -> SecureRNG:
        return SecureRNG.from_seed(run.seed, context) if run.dp.reproducible_noise else SecureRNG()

    def model_fn():
        return build_model(run.model, data.input_shape, data.num_classes, hidden=run.hidden, seed=run.seed)

    clients: list[Any] = []
    for k, idx in enumerate(parts):
        xk, yk = x_real[idx], y_real[idx]
        n_candidates = len(idx)
        if audit.kind == "example":
            mine = np.arange(k, m, run.clients)  # canary j lives on client j mod K
            n_candidates += len(mine)
            inc = mine[included[mine]]
            xk, yk = torch.cat([xk, cx[inc]]), torch.cat([yk, cy[inc]])
        # the sampling rate must not depend on the coins: fix it from the candidate count
        rate = run.client.sample_rate or min(1.0, run.client.batch_size / max(1, n_candidates))
        clients.append(SecureClient(
            f"client-{k}", xk, yk, model_fn=model_fn, task=data.task, config=replace(run.client, sample_rate=rate),
            dp=run.dp, planned_rounds=run.server.rounds, ledger=ledger, protection=Plaintext(),
            algorithm=run.server.algorithm, rng=rng(f"client-{k}"), seed=run.seed,
        ))
    model = model_fn()
    start = get_flat(model)
    if audit.kind == "client":
        directions = random_directions(m, start.numel(), content)
        weight = float(np.mean([len(p) for p in parts]))
        norm = audit.canary_norm or run.dp.clip
        clients += [CanaryClient(f"canary-{j}", directions[j], included=bool(included[j]), norm=norm, weight=weight)
                    for j in range(m)]
        scorer = SCORERS[audit.score](audit.score, model_fn(), start, directions=directions)
    else:
        scorer = SCORERS[audit.score](audit.score, model_fn(), start, x=cx, y=cy)
    server = SecureServer(model, config=run.server, dp=run.dp, num_clients=len(clients), protection=Plaintext(),
                          ledger=ledger, eval_data=(data.x_test, data.y_test), task=data.task, rng=rng("server"))
    accuracy = None
    for r in range(1, run.server.rounds + 1):
        scorer.before_round(server.weights)
        res = server.run_round(r, clients)
        scorer.after_round(server.weights)
        accuracy = res.accuracy
        if on_round is not None:
            on_round(r)
    scores = scorer.final(server.weights)
    result = one_run_audit(scores, included, delta=run.dp.delta, confidence=audit.confidence,
                           k_pos=audit.k_pos, k_neg=audit.k_neg)
    upper = None
    if run.dp.dp == "sample":
        upper = max(ledger.spent(c.client_id).get(run.dp.accountant) for c in clients[: run.clients])
    elif run.dp.dp == "client":
        upper = ledger.spent(FEDERATION).get(run.dp.accountant)
    report: dict[str, Any] = {
        **result.as_dict(),
        "epsilon_upper_bound": upper,
        "accountant": run.dp.accountant if run.dp.enabled else None,
        "dp": run.dp.dp,
        "canary_kind": audit.kind,
        "score": audit.score,
        "canary_data": audit.canary_data if audit.kind == "example" else None,
        "included": int(included.sum()),
        "accuracy": accuracy,
        "sound": upper is None or result.epsilon_lower_bound <= upper,
        "seconds": round(time.perf_counter() - t0, 2),
        "config": run.to_flat(),
    }
    if audit.kind == "client":
        report.update(one_shot_estimate(scores[included], scores[~included], run.dp.delta))
    if out is not None:
        from securefl._io import atomic_write_json

        atomic_write_json(out / "audit.json", report)
        plot_scores(scores, included, result, out / "audit_scores.png")
    return report


def plot_scores(scores: np.ndarray, included: np.ndarray, result: OneRunResult, path: Path) -> None:
    """Histogram of canary scores, included vs excluded."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    bins = np.histogram_bin_edges(scores, bins=50)
    ax.hist(scores[included], bins=bins, alpha=0.6, label=f"included ({int(included.sum())})")
    ax.hist(scores[~included], bins=bins, alpha=0.6, label=f"excluded ({int((~included).sum())})")
    ax.set_xlabel("canary score")
    ax.set_ylabel("canaries")
    ax.set_title(f"eps >= {result.epsilon_lower_bound:.2f} ({result.correct}/{result.guesses} guesses right)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
