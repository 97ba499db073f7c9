"""Poisoning attacks: each attack's maths."""

from __future__ import annotations

import pytest
import torch

from attacks.poisoning.attacks import (
    ATTACKS,
    ALittleIsEnough,
    GaussianNoise,
    InnerProductManipulation,
    LabelFlip,
    MinMax,
    MinSum,
    ScalingBackdoor,
    SignFlip,
    alie_z_max,
    apply_trigger,
    make_attack,
)
from attacks.poisoning.cases import RoundView
from securefl.exceptions import ConfigValueError
from securefl.privacy.noise import SecureRNG


def _view(m=2, h=6, d=5, seed=0, honest=True, n=None):
    g = torch.Generator().manual_seed(seed)
    return RoundView(
        round=1,
        global_weights=torch.zeros(d),
        benign=torch.randn(m, d, generator=g),
        honest=torch.randn(h, d, generator=g) + 1.0 if honest else None,
        num_participants=n or m + h,
    )


def rng():
    return SecureRNG.from_seed(0, "test")


# ------------------------------------------------------------------ attack maths
def test_registry_and_unknown_parameter():
    assert set(ATTACKS) == {"none", "label_flip", "sign_flip", "gaussian", "backdoor", "alie", "ipm", "minmax", "minsum"}
    with pytest.raises(ConfigValueError) as info:
        make_attack("ipm", {"eps": 100})
    assert info.value.field == "attack_arg" and "epsilon" in info.value.reason
    with pytest.raises(ConfigValueError) as info:
        make_attack("nope")
    assert info.value.field == "attack"
    with pytest.raises(ConfigValueError) as info:
        make_attack("ipm", {"epsilon": -1})
    assert info.value.field == "epsilon"


def test_label_flip_all_and_targeted():
    y = torch.tensor([0, 1, 2, 9, 3])
    x = torch.zeros(5, 2)
    assert LabelFlip().poison_data(x, y, num_classes=10, rng=rng())[1].tolist() == [9, 8, 7, 0, 6]
    _, yt = LabelFlip(source=3, target=8).poison_data(x, y, num_classes=10, rng=rng())
    assert yt.tolist() == [0, 1, 2, 9, 8]
    with pytest.raises(ConfigValueError):
        LabelFlip(source=3)


def test_trigger_and_backdoor_data():
    x = torch.zeros(4, 1, 8, 8)
    t = apply_trigger(x)
    assert t[0, 0, -3:, -3:].tolist() == [[1, 0, 1], [0, 1, 0], [1, 0, 1]]
    assert t[:, :, :5, :].abs().sum() == 0 and x.abs().sum() == 0  # input untouched
    assert apply_trigger(torch.zeros(2, 5))[1].tolist() == [0, 0, 1, 0, 1]  # tabular: last features
    with pytest.raises(ConfigValueError):
        apply_trigger(torch.zeros(2, 2))
    atk = ScalingBackdoor(target=7, poison_fraction=0.5)
    xp, yp = atk.poison_data(torch.rand(10, 1, 8, 8), torch.arange(10) % 3, num_classes=10, rng=rng())
    assert len(xp) == 15 and (yp[10:] == 7).all() and (yp[:10] == torch.arange(10) % 3).all()
    assert (xp[10:, 0, -1, -1] == 1).all()


def test_backdoor_scales_by_n_over_m_by_default():
    v = _view(m=2, h=8)
    assert torch.allclose(ScalingBackdoor().craft(v, rng()), v.benign * 5.0)
    assert torch.allclose(ScalingBackdoor(gamma=3.0).craft(v, rng()), v.benign * 3.0)


def test_sign_flip_and_gaussian():
    v = _view()
    assert torch.allclose(SignFlip(scale=2.0).craft(v, rng()), -2.0 * v.benign)
    big = RoundView(1, torch.zeros(20000), torch.zeros(2, 20000), None, 10)
    noise = GaussianNoise(std=3.0).craft(big, rng())
    assert abs(float(noise.std()) - 3.0) < 0.05 and abs(float(noise.mean())) < 0.05
    assert torch.equal(noise, GaussianNoise(std=3.0).craft(big, rng()))  # seeded stream


def test_alie_z_max_and_update():
    # n = 20, m = 4: s = floor(11) - 4 = 7, z = Phi^-1(13/20)
    assert alie_z_max(20, 4) == pytest.approx(0.38532, abs=1e-4)
    v = _view()
    out = ALittleIsEnough().craft(v, rng())
    z = alie_z_max(8, 2)
    expected = v.honest.mean(0) - z * v.honest.std(0)
    assert torch.allclose(out, expected.expand(2, -1), atol=1e-6)
    assert torch.allclose(ALittleIsEnough(z=1.5).craft(v, rng())[0], v.honest.mean(0) - 1.5 * v.honest.std(0), atol=1e-6)


def test_ipm_uses_honest_or_own_updates():
    v = _view()
    assert torch.allclose(InnerProductManipulation(epsilon=100).craft(v, rng())[1], -100 * v.honest.mean(0), atol=1e-4)
    own = _view(honest=False)
    assert torch.allclose(InnerProductManipulation(epsilon=0.5).craft(own, rng())[0], -0.5 * own.benign.mean(0), atol=1e-6)


@pytest.mark.parametrize("cls", [MinMax, MinSum])
@pytest.mark.parametrize("perturbation", ["unit", "std", "sign"])
def test_minmax_minsum_gamma_is_the_largest_feasible(cls, perturbation):
    v = _view(m=3, h=8, d=6, seed=3)
    atk = cls(perturbation=perturbation)
    g = atk.gamma(v)
    assert g > 0
    known = v.honest.double()
    mal = atk.craft(v, rng())[0].double()
    assert atk._ok(known, mal)
    from attacks.poisoning.attacks import _perturbation

    p = _perturbation(known, perturbation)
    assert not atk._ok(known, known.mean(0) + g * 1.01 * p)
