"""Every metric takes inputs, targets and model outputs through one shared path
(:mod:`captum_saco._utils`), Hugging Face models included."""

from types import SimpleNamespace

import captum._utils.typing as captum_typing
import pytest
import torch
from torch import nn
from transformers import ViTConfig, ViTForImageClassification

from captum_saco import _utils
from captum_saco._utils import format_inputs, model_output
from captum_saco.metrics import aopc, auc, comprehensiveness, deletion_curve, lodds, saco

METRICS = [saco, aopc, lodds, auc, comprehensiveness]


@pytest.fixture
def hf_vit() -> nn.Module:
    """A tiny Hugging Face ViT (8x8 images, 4x4 patches, 5 classes), random weights."""
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=8,
        patch_size=4,
        num_channels=3,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=5,
    )
    return ViTForImageClassification(config).eval()


def test_the_shared_types_are_captums_own():
    assert _utils.TargetType is captum_typing.TargetType
    assert _utils.BaselineType is captum_typing.BaselineType
    assert _utils.TensorOrTupleOfTensorsGeneric is captum_typing.TensorOrTupleOfTensorsGeneric


@pytest.mark.parametrize("metric", METRICS, ids=lambda m: m.__name__)
def test_every_metric_reads_the_logits_of_a_hugging_face_model(hf_vit, metric):
    images, attributions = torch.randn(2, 3, 8, 8), torch.rand(2, 8, 8)
    expected = metric(lambda x: hf_vit(x).logits, images, attributions)
    assert torch.equal(metric(hf_vit, images, attributions), expected)


def test_model_output_takes_a_tensor_or_the_logits_of_an_output_object():
    scores = torch.randn(2, 3)
    assert model_output(scores) is scores
    assert model_output(SimpleNamespace(logits=scores)) is scores
    with pytest.raises(TypeError, match="forward_func.*Tensor or an output with .logits.*dict"):
        model_output({"scores": scores})


def test_a_forward_func_returning_no_scores_is_rejected_by_every_metric(images):
    with pytest.raises(TypeError, match="forward_func.*list"):
        saco(lambda x: [x], images, torch.rand(4, 8, 8))


@pytest.mark.parametrize("metric", [saco, deletion_curve], ids=lambda m: m.__name__)
def test_a_forward_func_that_is_not_callable_is_rejected_by_name(images, metric):
    with pytest.raises(TypeError, match="forward_func: expected the model or a callable"):
        metric(None, images, torch.rand(4, 8, 8))


def test_format_inputs_returns_a_tuple_and_names_what_is_wrong():
    x = torch.zeros(2, 3)
    assert format_inputs(x) == (x,)
    assert format_inputs((x, x)) == (x, x)
    with pytest.raises(TypeError, match="inputs: expected a tensor or a non-empty tuple"):
        format_inputs(())
    with pytest.raises(TypeError, match="attributions: expected a tensor"):
        format_inputs([x], name="attributions")
    with pytest.raises(ValueError, match="inputs: every input needs a batch dimension"):
        format_inputs(torch.tensor(1.0))
    with pytest.raises(ValueError, match="inputs: got a tensor on the meta device"):
        format_inputs(torch.zeros(2, 3, device="meta"))
    with pytest.raises(ValueError, match="inputs: expected a dense tensor"):
        format_inputs(x.to_sparse())


def test_the_attribution_engine_uses_the_shared_model_output():
    from captum_saco.attr._core import engine

    assert engine.model_output is model_output
