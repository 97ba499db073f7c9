"""Reconstruction metrics: known answers."""

import math

import pytest
import torch

from attacks.inversion.metrics import label_accuracy, match_order, mean_image_psnr, mse, psnr, score, ssim


def _imgs(n=3, seed=0):
    return torch.rand((n, 1, 8, 8), generator=torch.Generator().manual_seed(seed))


def test_psnr_of_identical_images_is_inf_and_ssim_one():
    x = _imgs()
    assert torch.isinf(psnr(x, x)).all()
    assert torch.allclose(ssim(x, x), torch.ones(3, dtype=torch.float64))
    assert mse(x, x).eq(0).all()


def test_known_mse_and_psnr():
    a = torch.zeros((2, 1, 8, 8))
    b = torch.full((2, 1, 8, 8), 0.5)
    assert mse(a, b).tolist() == [0.25, 0.25]
    assert psnr(a, b)[0].item() == pytest.approx(10 * math.log10(4), abs=1e-12)  # 6.0206 dB
    assert psnr(a, b, data_range=2.0)[0].item() == pytest.approx(10 * math.log10(16), abs=1e-12)


def test_ssim_falls_for_inverted_and_noisy_images():
    x = _imgs(4)
    noisy = (x + 0.3 * _imgs(4, seed=1)).clamp(0, 1)
    s_noisy, s_inv = ssim(x, noisy), ssim(x, 1 - x)
    assert (s_noisy < 0.99).all() and (s_inv < s_noisy).all()


def test_matching_recovers_a_permutation_and_label_accuracy():
    x = _imgs(5)
    perm = torch.tensor([3, 0, 4, 1, 2])
    rec = x[perm]
    order = match_order(x, rec)
    assert torch.equal(rec[order], x)
    labels = torch.arange(5)
    s = score(x, labels, rec, labels[perm], x.mean(0))
    assert all(math.isinf(v) for v in s.psnr) and s.label_accuracy == 1.0
    assert label_accuracy(labels, torch.tensor([0, 1, 2, 0, 0])) == 0.6


def test_mean_image_baseline_is_psnr_of_the_mean():
    x = _imgs(4)
    m = x.mean(0)
    assert torch.allclose(mean_image_psnr(x, m), psnr(m.expand_as(x), x))
    assert (mean_image_psnr(x, m) < 20).all()


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shapes differ"):
        mse(torch.zeros(2, 4), torch.zeros(3, 4))
