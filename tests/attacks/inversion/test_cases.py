"""Inversion cases: the server view is what each protection releases."""

import pytest
import torch

from attacks.inversion.cases import CaseConfig, build_case_model, local_update
from securefl.exceptions import ConfigValueError
from securefl.privacy.noise import SecureRNG


def test_dp_noise_is_fresh_each_time(digits):
    case = CaseConfig(dp="sample", clip=0.1, noise_multiplier=1.0)
    model = build_case_model(case, digits.input_shape, digits.num_classes, seed=0)
    x, y = digits.x_train[:1], digits.y_train[:1]
    torch.manual_seed(0)
    a, _ = local_update(model, x, y, case, SecureRNG())
    torch.manual_seed(0)
    b, _ = local_update(model, x, y, case, SecureRNG())
    assert not torch.equal(a[0], b[0])
    plain, _ = local_update(model, x, y, CaseConfig(), SecureRNG())
    # noise std sigma*C*lr per coordinate: the noisy update is far from the plain one
    assert (a[0] - plain[0]).std() > 0.5 * 1.0 * 0.1 * 0.1


def test_aggregate_view_is_the_sum_of_all_clients_updates(play_round):
    case = CaseConfig(protect="secagg", clients=3)
    view, truth = play_round(case)
    assert view.contributors == 3 and view.weight == 3.0 and view.images == 3
    model = view.model
    expected = None
    for i in range(3):
        d, _ = local_update(model, truth.all_images[i : i + 1], truth.all_labels[i : i + 1], CaseConfig(), SecureRNG())
        expected = d if expected is None else [e + di for e, di in zip(expected, d)]
    for got, want in zip(view.update, expected):
        assert torch.allclose(got, want, atol=1e-6)
    plain, _ = play_round(CaseConfig())
    assert plain.contributors == 1 and plain.weight == 1.0


def test_client_level_dp_view_carries_the_distributed_noise_only_under_secagg(play_round):
    from securefl.crypto.secagg.common import distributed_noise_stddev

    clip, z = 1e-3, 1.0
    case = CaseConfig(protect="secagg", clients=10, dp="client", clip=clip, noise_multiplier=z)
    noisy, _ = play_round(case)
    flat = torch.cat([u.flatten() for u in noisy.update]).double()
    # ten shares, each of the library's calibrated std: at least N(0, (z C)^2) in the sum
    settings = case.secagg_settings()
    share = distributed_noise_stddev(
        settings, dim=flat.numel(), threshold=settings.threshold_for(10), resolution=settings.codec(10).resolution
    )
    assert float(flat.std()) == pytest.approx(share * 10**0.5, rel=0.1)
    assert share * 10**0.5 >= z * clip
    plain, _ = play_round(CaseConfig(protect="ckks", clients=10, dp="client", clip=clip, noise_multiplier=z))
    norm = float(torch.sqrt(sum(u.double().pow(2).sum() for u in plain.update)))
    assert norm <= 10 * clip * (1 + 1e-5)  # clipped, and the server adds its noise only after reading


def test_under_dp_updates_have_weight_one_and_the_server_knows_the_images(play_round):
    view, truth = play_round(CaseConfig(batch_size=2, protect="secagg", clients=3, dp="sample", clip=0.1))
    assert view.weight == 3.0 and view.images == 6 == len(truth.all_images)
    plain, _ = play_round(CaseConfig(batch_size=2, protect="secagg", clients=3))
    assert plain.weight == 6.0 and plain.images == 6


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"dp": "central"}, "dp"),
        ({"protect": "rot13"}, "protect"),
        ({"noise_multiplier": 0.5}, "noise_multiplier"),
        ({"dp": "sample", "clip": 0.0}, "clip"),
        ({"protect": "secagg", "clients": 1}, "clients"),
    ],
)
def test_bad_case_names_the_field(kwargs, field):
    with pytest.raises(ConfigValueError) as exc:
        CaseConfig(**kwargs)
    assert exc.value.field == field
