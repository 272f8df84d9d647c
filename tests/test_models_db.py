"""Parameter counts computed by moesim agree with the published ones.

The tolerance is 2%, or the rounding of the published figure where that is coarser
("2.4B" means 2.35B to 2.45B): a count cannot be checked more finely than it was published.
"""

import pytest

from moesim import db
from moesim.db import models


def published_tolerance(value: float) -> float:
    text = f"{value / 1e9:g}"
    decimals = len(text.split(".")[1]) if "." in text else 0
    half_unit = 0.5 * 10.0 ** -decimals * 1e9
    return max(0.02, half_unit / value)


@pytest.mark.parametrize("name,model", sorted(db.models().entries.items()))
def test_param_counts_match_published(name, model):
    pub = model.published
    assert pub is not None, f"{name} has no published parameter counts"
    extra = pub.count_tolerance or 0.0
    if extra:
        assert "published.count_tolerance" in model.derived, f"{name}: a wider tolerance must be explained"
    rel_total = max(extra, published_tolerance(pub.total_params))
    assert model.total_params == pytest.approx(pub.total_params, rel=rel_total)
    active = model.published_convention_active_params()
    assert active == pytest.approx(pub.active_params, rel=max(extra, published_tolerance(pub.active_params)))


def test_tolerance_follows_published_rounding():
    assert published_tolerance(2.4e9) == pytest.approx(0.05 / 2.4)
    assert published_tolerance(671e9) == 0.02


def test_mixtral_hand_count():
    m = models().get("mixtral-8x7b")
    attn = 4096 * 4096 * 2 + 2 * 4096 * 1024
    expert = 3 * 4096 * 14336
    emb = 32000 * 4096
    assert m.total_params == 32 * (attn + 8 * expert + 4096 * 8) + 2 * emb
