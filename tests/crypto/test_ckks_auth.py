"""The CKKS MAC tags: the BLAS-free product equals the reference matrix product."""

from __future__ import annotations

import os

import numpy as np
import pytest

from securefl.crypto import ckks_auth as auth


@pytest.mark.parametrize("length", [1, 7, 8, 1000, 40_013])
def test_tag_products_equal_the_sign_vectors_times_the_body(length):
    key = os.urandom(32)
    body = np.random.default_rng(length).uniform(-1, 1, length)  # test data only
    r = auth.tag_vectors(key, 3, length)
    assert r.shape == (auth.TAGS, length) and np.allclose(np.abs(r), 1 / np.sqrt(length))
    assert np.allclose(auth.tag_products(key, 3, body), r @ body, rtol=0, atol=1e-12)
    if length < 7:  # 6 tags x length signs: too few to differ surely
        return
    # another round or key gives other vectors
    assert not np.allclose(auth.tag_products(key, 4, body), r @ body)
    assert not np.allclose(auth.tag_products(os.urandom(32), 3, body), r @ body)


def test_tags_refuse_a_body_of_the_wrong_length():
    layout = auth.Layout(10, (), 3)
    with pytest.raises(ValueError, match="body"):
        auth.tags(os.urandom(32), 1, layout, np.zeros(layout.body + 1), ["a"])
