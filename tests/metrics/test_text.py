"""Token ids: (N, L, D) attributions reduced over D, and padding excluded by an
attention mask, on a tiny Hugging Face text classifier built from a config."""

from typing import List, Tuple

import pytest
import torch
from torch import Tensor

from captum_saco.metrics import deletion_curve, saco, score_attributions

PAD_ID, MASK_ID = 0, 3


@pytest.fixture
def bert(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=2,
        pad_token_id=PAD_ID,
    )
    BertForSequenceClassification(config).save_pretrained(tmp_path)
    return BertForSequenceClassification.from_pretrained(tmp_path).eval()


@pytest.fixture
def batch():
    ids = torch.tensor([[5, 17, 9, 23, 11, 8], [7, 30, 12, 4, PAD_ID, PAD_ID]])
    return ids, (ids != PAD_ID).long()


def logits_of(model):
    seen: List[Tuple[Tensor, Tensor]] = []

    def forward(ids: Tensor, mask: Tensor) -> Tensor:
        seen.append((ids.clone(), mask.clone()))
        return model(input_ids=ids, attention_mask=mask).logits

    return forward, seen


def test_embedding_attributions_are_reduced_over_d_by_sum_or_norm(bert, batch):
    ids, mask = batch
    forward, _ = logits_of(bert)
    torch.manual_seed(1)
    attributions = torch.randn(2, 6, 16)
    common = dict(baselines=PAD_ID, additional_forward_args=(mask,), n_groups=3, target=0)
    assert torch.equal(
        saco(forward, ids, attributions, **common),
        saco(forward, ids, attributions.sum(-1), **common),
    )
    assert torch.equal(
        saco(forward, ids, attributions, reduce="norm", **common),
        saco(forward, ids, attributions.norm(dim=-1), **common),
    )
    with pytest.raises(ValueError, match="reduce"):
        saco(forward, ids, attributions, reduce="max", **common)


def test_padding_is_neither_ranked_nor_removed(bert, batch):
    ids, mask = batch
    forward, seen = logits_of(bert)
    # padding holds the largest salience: without the mask it would go first
    attributions = torch.tensor([[1.0, 2, 3, 4, 5, 6], [1.0, 2, 3, 4, 9, 9]])
    curve = deletion_curve(
        forward,
        ids,
        attributions,
        baselines=MASK_ID,
        additional_forward_args=(mask,),
        fractions=(0.5, 1.0),
        attention_mask=mask,
    )
    assert curve.n_removed.tolist() == [[0, 3, 6], [0, 2, 4]]
    rows = torch.cat([ids for ids, _ in seen])
    masks = torch.cat([m for _, m in seen])  # each row's own mask, taken per example
    assert (rows[masks == 0] == PAD_ID).all()
    # half of example two's real tokens, most salient first: positions 3 and 2
    assert [7, 30, MASK_ID, MASK_ID, PAD_ID, PAD_ID] in rows.tolist()
    assert [MASK_ID] * 4 + [PAD_ID] * 2 in rows.tolist()


def test_attention_mask_must_match_the_tokens(bert, batch):
    ids, mask = batch
    forward, _ = logits_of(bert)
    with pytest.raises(ValueError, match="attention_mask: expected shape"):
        saco(
            forward,
            ids,
            torch.rand(2, 6),
            baselines=PAD_ID,
            additional_forward_args=(mask,),
            n_groups=2,
            attention_mask=mask[:, :5],
        )


def test_score_attributions_takes_the_mask_and_reduction(bert, batch):
    ids, mask = batch
    forward, _ = logits_of(bert)
    torch.manual_seed(2)
    maps = {"a": torch.randn(2, 6, 16)}
    common = dict(baselines=PAD_ID, additional_forward_args=(mask,), attention_mask=mask)
    scores = score_attributions(
        forward, ids, maps, metrics=("saco",), n_groups=2, reduce="norm", **common
    )
    expected = saco(forward, ids, maps["a"], n_groups=2, reduce="norm", **common)
    assert torch.allclose(scores["a"]["saco"], expected, equal_nan=True)


def test_the_readme_text_example_runs():
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme[readme.index("## Text: token ids, embedding attributions and padding") :]
    code = section[section.index("```python") + len("```python") : section.index("```\n\n")]
    exec(compile(code, "README.md", "exec"), {})
