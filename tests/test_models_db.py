"""Parameter counts computed by moesim agree with the published ones (within 2%)."""

import pytest

from moesim.db import models

ENTRIES = sorted(models().entries.items())


@pytest.mark.parametrize("name,model", ENTRIES, ids=[n for n, _ in ENTRIES])
def test_param_counts_match_published(name, model):
    pub = model.published
    assert pub is not None, f"{name} has no published parameter counts"
    assert model.total_params == pytest.approx(pub.total_params, rel=0.02)
    assert model.active_params(pub.active_includes_embeddings) == pytest.approx(pub.active_params, rel=0.02)


def test_mixtral_hand_count():
    m = models().get("mixtral-8x7b")
    attn = 4096 * 4096 * 2 + 2 * 4096 * 1024
    expert = 3 * 4096 * 14336
    emb = 32000 * 4096
    assert m.total_params == 32 * (attn + 8 * expert + 4096 * 8) + 2 * emb
