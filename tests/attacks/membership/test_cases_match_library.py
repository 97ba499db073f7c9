"""The membership case trains its DP-SGD target with the library's mechanism: the same
model as securefl's dp_sgd_train for the same inputs and seeded SecureRNG, and the
epsilon of the library's accountant."""

import math

import torch
import torch.nn.functional as F

from attacks.membership.cases import MembershipConfig, split, train_model
from securefl.models import build_model, get_flat
from securefl.privacy.accounting import epsilon_under
from securefl.privacy.dpsgd import dp_sgd_train
from securefl.privacy.noise import SecureRNG


def test_dp_target_equals_the_library_dp_sgd(digits):
    cfg = MembershipConfig(members=40, epochs=3, batch_size=10, lr=0.2, hidden=16, dp="sample", noise_multiplier=2.0,
                           references=0)
    (x, y), _, _ = split(digits, cfg)
    target, eps = train_model(x, y, cfg, digits.num_classes, seed=4, rng=SecureRNG.from_seed(9, "membership"))
    q = cfg.batch_size / len(x)
    steps = math.ceil(cfg.epochs / q)
    model = build_model(cfg.model, tuple(x.shape[1:]), digits.num_classes, hidden=cfg.hidden, seed=4)
    model.train()
    dp_sgd_train(model, x, y, loss_fn=F.cross_entropy, optimizer_fn=lambda ps: torch.optim.SGD(ps, lr=cfg.lr),
                 noise_multiplier=cfg.noise_multiplier, max_grad_norm=cfg.clip, sample_rate=q, steps=steps,
                 rng=SecureRNG.from_seed(9, "membership"))
    assert torch.equal(get_flat(target), get_flat(model))
    assert eps == epsilon_under("rdp", ((cfg.noise_multiplier, q, steps),), cfg.delta)
