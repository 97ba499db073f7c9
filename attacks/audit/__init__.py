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

Modules: :mod:`.metrics` (the statistics: one-run and two-hypothesis bounds, the
Gaussian mechanism's exact epsilon and the one-shot estimate), :mod:`.attacks` (the
canaries and how the attacker scores them), :mod:`.cases` (the audited federation,
built by :class:`securefl.simulation.Simulation`, and where the canaries sit in it),
:mod:`.run` (one audit), :mod:`.bench` (an audit over seeds) and :mod:`.commands`
(``securefl audit empirical`` and ``securefl audit mechanism``).
"""
