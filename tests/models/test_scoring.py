"""How every model scores items: dot product by default, cosine with ``model.score=cosine``."""

import pytest
import torch
import torch.nn.functional as F

from elasticrec.config import ModelConfig
from elasticrec.models import build_model, list_models


@pytest.mark.parametrize("name", list_models())
def test_cosine_scores_are_cosine_similarities(name):
    torch.manual_seed(0)
    n_items = 29
    dot = build_model(ModelConfig(name=name, max_len=8, d_model=16), n_items)
    cos = build_model(ModelConfig(name=name, max_len=8, d_model=16, score="cosine"), n_items)
    cos.load_state_dict(dot.state_dict())  # same weights, only the score differs
    h = torch.randn(4, 16)
    emb = dot.item_embeddings()
    torch.testing.assert_close(dot.score_all(h), h @ emb.t())
    torch.testing.assert_close(cos.score_all(h), F.cosine_similarity(h[:, None], emb[None], dim=-1),
                               rtol=1e-5, atol=1e-6)
    # the padding row (all zeros) scores 0 instead of NaN
    assert torch.isfinite(cos.score_all(h)).all()
    torch.testing.assert_close(cos.score_all(5.0 * h), cos.score_all(h), rtol=1e-5, atol=1e-6)
