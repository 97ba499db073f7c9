"""The aggregate case matches what the real secure-aggregation and CKKS protocols release."""

import numpy as np
import torch

from attacks.inversion.attacks import reconstruct
from attacks.inversion.cases import CaseConfig, ServerView, build_case_model, local_update, trial_batches
from attacks.inversion.metrics import psnr
from securefl.crypto.secagg.common import SecAggSettings
from securefl.privacy.noise import SecureRNG


def _updates(digits, case):
    idx = trial_batches(digits.y_train, case, 0, 0)
    model = build_case_model(case, digits.input_shape, digits.num_classes, seed=0)
    updates = [local_update(model, digits.x_train[i], digits.y_train[i], case, SecureRNG())[0] for i in idx]
    return model, updates, [torch.cat([u.reshape(-1) for u in upd]).double().numpy() for upd in updates]


def test_secagg_release_equals_the_plaintext_sum_the_case_uses(digits, secagg_aggregate):
    case = CaseConfig(protect="secagg", clients=10)
    model, updates, flat = _updates(digits, case)
    agg = secagg_aggregate(SecAggSettings(bits=64), flat)
    plain = np.sum(flat, axis=0)
    assert agg.count == 10 and agg.aux["weight"] == 10.0
    np.testing.assert_allclose(agg.total.double().numpy(), plain, atol=1e-5)
    # an attack on the protocol's output gets what it gets on the case's sum
    shapes = [p.shape for p in model.parameters()]
    parts = torch.split(agg.total.float(), [int(np.prod(s)) for s in shapes])
    view = ServerView(model, tuple(p.reshape(s) for p, s in zip(parts, shapes)), 10.0, 10, 1, case.local_lr, (1, 8, 8), 10)
    rec_real = reconstruct("analytic", view)
    sums = [sum(u[j] for u in updates) for j in range(len(shapes))]
    rec_case = reconstruct("analytic", ServerView(model, tuple(sums), 10.0, 10, 1, case.local_lr, (1, 8, 8), 10))
    assert psnr(rec_real.images, rec_case.images).min() > 30


def test_ckks_release_is_the_plaintext_sum_up_to_flooding_noise(digits, ckks_aggregate):
    case = CaseConfig(protect="ckks", clients=10)
    _, _, flat = _updates(digits, case)
    clip = 1.01 * float(max(np.linalg.norm(f) for f in flat))  # CKKS clips the L2 norm: keep it loose
    agg = ckks_aggregate(flat, clip)
    err = np.abs(agg.total.double().numpy() - np.sum(flat, axis=0))
    assert agg.count == 10 and agg.individual is None
    assert agg.stats["clipped"] == 0
    assert 0 < err.max() < 1e-3 * clip  # flooded, but the same sum
