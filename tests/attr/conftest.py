"""Fixtures shared by the attribution tests: the reference file of the original
authors' code and its small ViT in the three supported model families."""

from pathlib import Path
from typing import Callable, Dict, List, Tuple

import pytest
import timm
import torch
import torchvision
from torch import Tensor, nn
from transformers import ViTConfig, ViTForImageClassification

DATA = Path(__file__).resolve().parents[1] / "data"
REFERENCE_FILE = DATA / "vit_chefer_reference.pt"
MORE_REFERENCE_FILE = DATA / "vit_reference_more.pt"
FAMILIES = ("timm", "huggingface", "torchvision")


@pytest.fixture(scope="session")
def reference() -> Dict:
    """The recorded outputs of the original implementations (see tests/data/README.md)."""
    return torch.load(REFERENCE_FILE, weights_only=True)


@pytest.fixture(scope="session")
def more_reference() -> Dict:
    """More recorded outputs for the same ViT: full LRP, LXT, conservative LRP,
    AttCAT and float64 reruns (see tests/data/README.md)."""
    return torch.load(MORE_REFERENCE_FILE, weights_only=True)


def timm_from_reference(reference: Dict) -> nn.Module:
    config = reference["config"]
    model = timm.models.VisionTransformer(
        img_size=config["img_size"],
        patch_size=config["patch_size"],
        embed_dim=config["embed_dim"],
        depth=config["depth"],
        num_heads=config["num_heads"],
        num_classes=config["num_classes"],
        qkv_bias=True,
    )
    model.load_state_dict(reference["state_dict"], strict=True)
    return model.eval()


def huggingface_from_reference(reference: Dict) -> nn.Module:
    """The reference weights in ``ViTForImageClassification`` (transformers 5 names)."""
    config = reference["config"]
    dim = config["embed_dim"]
    model = ViTForImageClassification(
        ViTConfig(
            image_size=config["img_size"],
            patch_size=config["patch_size"],
            hidden_size=dim,
            num_hidden_layers=config["depth"],
            num_attention_heads=config["num_heads"],
            intermediate_size=4 * dim,
            num_labels=config["num_classes"],
            layer_norm_eps=1e-6,
            hidden_act="gelu",
        )
    )
    timm_weights = reference["state_dict"]
    weights = {
        "vit.embeddings.cls_token": timm_weights["cls_token"],
        "vit.embeddings.position_embeddings": timm_weights["pos_embed"],
        "vit.embeddings.patch_embeddings.projection.weight": timm_weights[
            "patch_embed.proj.weight"
        ],
        "vit.embeddings.patch_embeddings.projection.bias": timm_weights["patch_embed.proj.bias"],
        "vit.layernorm.weight": timm_weights["norm.weight"],
        "vit.layernorm.bias": timm_weights["norm.bias"],
        "classifier.weight": timm_weights["head.weight"],
        "classifier.bias": timm_weights["head.bias"],
    }
    for b in range(config["depth"]):
        src, dst = f"blocks.{b}.", f"vit.layers.{b}."
        for kind in ("weight", "bias"):
            q, k, v = timm_weights[src + f"attn.qkv.{kind}"].chunk(3)
            weights.update(
                {
                    dst + f"attention.q_proj.{kind}": q,
                    dst + f"attention.k_proj.{kind}": k,
                    dst + f"attention.v_proj.{kind}": v,
                    dst + f"attention.o_proj.{kind}": timm_weights[src + f"attn.proj.{kind}"],
                    dst + f"layernorm_before.{kind}": timm_weights[src + f"norm1.{kind}"],
                    dst + f"layernorm_after.{kind}": timm_weights[src + f"norm2.{kind}"],
                    dst + f"mlp.fc1.{kind}": timm_weights[src + f"mlp.fc1.{kind}"],
                    dst + f"mlp.fc2.{kind}": timm_weights[src + f"mlp.fc2.{kind}"],
                }
            )
    model.load_state_dict(weights, strict=True)
    return model.eval()


def torchvision_from_reference(reference: Dict) -> nn.Module:
    config = reference["config"]
    dim = config["embed_dim"]
    model = torchvision.models.VisionTransformer(
        image_size=config["img_size"],
        patch_size=config["patch_size"],
        num_layers=config["depth"],
        num_heads=config["num_heads"],
        hidden_dim=dim,
        mlp_dim=4 * dim,
        num_classes=config["num_classes"],
    )
    timm_weights = reference["state_dict"]
    weights = {
        "class_token": timm_weights["cls_token"],
        "encoder.pos_embedding": timm_weights["pos_embed"],
        "conv_proj.weight": timm_weights["patch_embed.proj.weight"],
        "conv_proj.bias": timm_weights["patch_embed.proj.bias"],
        "encoder.ln.weight": timm_weights["norm.weight"],
        "encoder.ln.bias": timm_weights["norm.bias"],
        "heads.head.weight": timm_weights["head.weight"],
        "heads.head.bias": timm_weights["head.bias"],
    }
    for b in range(config["depth"]):
        src, dst = f"blocks.{b}.", f"encoder.layers.encoder_layer_{b}."
        for kind in ("weight", "bias"):
            attention = dst + "self_attention."
            weights.update(
                {
                    dst + f"ln_1.{kind}": timm_weights[src + f"norm1.{kind}"],
                    attention + f"in_proj_{kind}": timm_weights[src + f"attn.qkv.{kind}"],
                    attention + f"out_proj.{kind}": timm_weights[src + f"attn.proj.{kind}"],
                    dst + f"ln_2.{kind}": timm_weights[src + f"norm2.{kind}"],
                    dst + f"mlp.0.{kind}": timm_weights[src + f"mlp.fc1.{kind}"],
                    dst + f"mlp.3.{kind}": timm_weights[src + f"mlp.fc2.{kind}"],
                }
            )
    model.load_state_dict(weights, strict=True)
    return model.eval()


_BUILDERS: Dict[str, Callable[[Dict], nn.Module]] = {
    "timm": timm_from_reference,
    "huggingface": huggingface_from_reference,
    "torchvision": torchvision_from_reference,
}


@pytest.fixture(scope="session")
def reference_models(reference: Dict) -> Dict[str, nn.Module]:
    """The reference ViT, family name -> model (in eval mode)."""
    return {family: build(reference) for family, build in _BUILDERS.items()}


@pytest.fixture(params=FAMILIES)
def reference_model(request: pytest.FixtureRequest, reference_models: Dict) -> nn.Module:
    """The reference ViT in each family in turn."""
    return reference_models[request.param]


@pytest.fixture(scope="session")
def timm_reference_model(reference_models: Dict) -> nn.Module:
    return reference_models["timm"]


def logits_of(model: nn.Module, images: Tensor) -> Tensor:
    """The model's class scores, whatever object the family returns."""
    output = model(images)
    return output if isinstance(output, Tensor) else output.logits


def model_state(model: nn.Module) -> List[Tuple]:
    """Everything an attribution call could leave behind on a model: hooks,
    instance-level forward overrides, attention settings, modes and weights."""
    state: List[Tuple] = []
    for name, module in model.named_modules():
        config = getattr(module, "config", None)
        state.append(
            (
                name,
                len(module._forward_hooks),
                len(module._forward_pre_hooks),
                len(module._backward_hooks),
                "forward" in module.__dict__,
                getattr(module, "fused_attn", None),
                getattr(config, "_attn_implementation_internal", None),
                module.training,
            )
        )
    state.extend((k, v.clone()) for k, v in model.state_dict().items())
    return state


def assert_same_state(before: List[Tuple], after: List[Tuple]) -> None:
    assert len(before) == len(after)
    for old, new in zip(before, after):
        if isinstance(old[1], Tensor):
            assert old[0] == new[0] and torch.equal(old[1], new[1]), old[0]
        else:
            assert old == new


@pytest.fixture(scope="session")
def state_of() -> Callable[[nn.Module], List[Tuple]]:
    """``state_of(model)``: a comparable snapshot (see :func:`model_state`)."""
    return model_state


@pytest.fixture(scope="session")
def same_state() -> Callable[[List[Tuple], List[Tuple]], None]:
    """``same_state(before, after)`` asserts two snapshots are equal."""
    return assert_same_state


@pytest.fixture(scope="session")
def scores_of() -> Callable[[nn.Module, Tensor], Tensor]:
    """``scores_of(model, images)``: the class scores of any supported family."""
    return logits_of
