"""The statistics of empirical privacy audits: lower bounds on epsilon from an
attacker's guesses.

* One run (Steinke, Nasr and Jagielski, NeurIPS 2023, Thm. 3.1): ``r`` guesses about
  ``m`` canaries, ``v`` of them right, give the p-value
  ``f(v) + 2 m delta max_i (f(v - i) - f(v)) / i`` with
  ``f(v) = P[Binomial(r, e^eps / (1 + e^eps)) >= v]``; the lower bound is the
  smallest epsilon this p-value does not reject at the confidence.
* The Gaussian mechanism's exact epsilon (Balle and Wang 2018) and the one-shot
  estimate of Andrew et al. (ICLR 2024), which is an estimate, not a bound.
* Two hypotheses (e.g. Jagielski, Ullman and Oprea 2020): Clopper-Pearson bounds on
  the false-positive and false-negative rates of a threshold test give
  ``eps >= log((1 - delta - FNR) / FPR)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from scipy import special, stats

from securefl.exceptions import ConfigValueError

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


def check_level(name: str, value: float, *, closed_low: bool) -> None:
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
    check_level("delta", delta, closed_low=True)
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
    check_level("confidence", confidence, closed_low=False)
    check_level("delta", delta, closed_low=True)
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
    check_level("delta", delta, closed_low=False)
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
    check_level("confidence", confidence, closed_low=False)
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
