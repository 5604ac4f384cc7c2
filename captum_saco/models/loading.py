"""Models by name, with their own preprocessing and class names.

``--model`` of the command line names a model as ``timm:NAME`` (or a bare
timm name), ``hf:HUB_ID_OR_LOCAL_DIR``, ``torchvision:NAME``,
``module:callable`` or ``path/to/file.py:callable``. :func:`load_model`
builds it and reads the preprocessing it was trained with and its class
names (for true labels of class folders)."""

import difflib
import importlib
import importlib.util
import os
import socket
import sys
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Sequence
from urllib.parse import urlparse

import torch
from torch import nn

from captum_saco.models.preprocessing import (
    Preprocessing,
    hf_preprocessing,
    timm_preprocessing,
    torchvision_preprocessing,
)

#: the model shipped with the package, a small ViT trained on Fashion-MNIST
EMBEDDED_MODEL = "fashion_mnist_vit"
#: seconds to wait for a model hub to answer before calling it unreachable
CONNECT_TIMEOUT = 3.0


class ModelLoadError(ValueError):
    """A model that cannot be loaded, said in one sentence."""


@dataclass
class LoadedModel:
    """A model with what :func:`load_model` learnt about it."""

    model: nn.Module
    preprocessing: Preprocessing
    """The preprocessing the model was trained with."""
    class_names: Optional[List[str]]
    """Each output's class name(s), by index (``"tench, Tinca tinca"``), if known."""
    synsets: Optional[List[str]]
    """Each output's ImageNet synset (``"n01440764"``), if the model is an ImageNet one."""
    random_weights: bool
    """Whether the weights are a random initialisation."""


def did_you_mean(name: str, choices: Sequence[str]) -> str:
    """``" (did you mean X?)"`` with the choices closest to ``name``, also for a
    typo inside a long name (``rolout`` -> ``attention_rollout``); empty if none
    is close.

    Examples::

        >>> did_you_mean("rolout", ["attention_rollout", "saliency"])
        ' (did you mean attention_rollout?)'
        >>> did_you_mean("xyz", ["saliency"])
        ''
    """

    def score(choice: str) -> float:
        parts = [choice] + choice.replace("-", "_").split("_")
        return max(difflib.SequenceMatcher(None, name.lower(), p.lower()).ratio() for p in parts)

    scored = sorted(((score(c), c) for c in choices), key=lambda sc: -sc[0])
    close = [c for s, c in scored[:3] if s >= 0.75]
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _unreachable(url: str) -> Optional[str]:
    """Why the host of ``url`` cannot be reached within
    :data:`CONNECT_TIMEOUT` seconds, or None if it answers."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=CONNECT_TIMEOUT).close()
    except OSError as e:
        return f"no network: cannot reach {parsed.hostname} ({e.strerror or e})"
    return None


def _hf_endpoint() -> str:
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT") or constants.ENDPOINT


def _not_downloaded(spec: str, cause: str) -> ModelLoadError:
    return ModelLoadError(f"--model {spec!r}: cannot load it from the hub: {cause}")


@contextmanager
def _hub_access(spec: str) -> Iterator[None]:
    """Download from the Hugging Face hub with short timeouts, or, if it
    cannot be reached, from the local cache only, so that a missing network
    fails at once instead of through retries; a failure is one sentence
    naming the model and the cause."""
    from huggingface_hub import constants, errors

    offline = None if constants.HF_HUB_OFFLINE else _unreachable(_hf_endpoint())
    saved = (constants.HF_HUB_OFFLINE, constants.HF_HUB_ETAG_TIMEOUT)
    constants.HF_HUB_OFFLINE = saved[0] or offline is not None
    constants.HF_HUB_ETAG_TIMEOUT = min(saved[1], 5)
    try:
        yield
    except errors.GatedRepoError:
        raise ModelLoadError(
            f"--model {spec!r}: no access (a gated model: log in with hf auth login)"
        )
    except errors.RepositoryNotFoundError:
        raise ModelLoadError(f"--model {spec!r}: not found on the hub (or private)")
    except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled, OSError) as e:
        cause = offline or ("offline mode (HF_HUB_OFFLINE)" if saved[0] else _first_line(e))
        cause += ", and it is not cached" if offline or saved[0] else ""
        raise _not_downloaded(spec, cause)
    finally:
        constants.HF_HUB_OFFLINE, constants.HF_HUB_ETAG_TIMEOUT = saved


def _timm(name: str, spec: str, pretrained: bool) -> LoadedModel:
    try:
        import timm
        from timm.data import ImageNetInfo, infer_imagenet_subset
    except ImportError:
        raise ModelLoadError(f"--model {spec!r} needs timm: pip install 'captum-saco[timm]'")
    if not timm.is_model(name):
        hint = did_you_mean(name, timm.list_models())
        raise ModelLoadError(
            f"--model {spec!r} is not a timm model name{hint}; other models: hf:HUB_ID_OR_DIR, "
            "torchvision:NAME, module:callable, path/to/file.py:callable"
        )
    if pretrained:
        with _hub_access(spec):
            model = timm.create_model(name, pretrained=True)
    else:
        model = timm.create_model(name)
    if getattr(model, "num_classes", None) == 0:
        raise ModelLoadError(
            f"--model {spec!r} is a feature extractor (num_classes=0, no classifier head); name "
            "a tag trained on classes (such as one ending in _in1k), or explain a CLIP or "
            "SigLIP over class names with --zero-shot and an hf: or open_clip: model"
        )
    subset = infer_imagenet_subset(model)
    info = ImageNetInfo(subset) if subset else None
    names = [info.index_to_description(i) for i in range(info.num_classes())] if info else None
    synsets = info.label_names() if info else None
    return LoadedModel(model, timm_preprocessing(model), names, synsets, not pretrained)


def _imagenet_synsets(classes: int) -> Optional[List[str]]:
    """ImageNet-1k's synsets for a model with 1000 outputs (timm's table)."""
    if classes != 1000:
        return None
    try:
        from timm.data import ImageNetInfo
    except ImportError:
        return None
    return list(ImageNetInfo("imagenet-1k").label_names())


def _check_complete(spec: str, model: nn.Module, missing: List[str]) -> None:
    """Refuse a Hugging Face checkpoint that lacks weights of the classifier built
    from it (``missing``): a backbone or a CLIP/SigLIP saved without an image
    classification head, whose head would be random."""
    if missing:
        saved = ", ".join(model.config.architectures or []) or "another model"
        raise ModelLoadError(
            f"--model {spec!r} is not an image classifier (it holds {saved}): "
            f"{type(model).__name__} would draw {', '.join(missing[:2])} at random; name a "
            "model fine-tuned on classes, or explain a CLIP or SigLIP over class names with "
            "--zero-shot"
        )


def _hf(source: str, spec: str, pretrained: bool) -> LoadedModel:
    try:
        from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification
    except ImportError:
        raise ModelLoadError(f"--model {spec!r} needs transformers: pip install transformers")
    local = Path(source).is_dir()
    # an image processor saves preprocessor_config.json, a processor holding one
    # (CLIPProcessor, SiglipProcessor) processor_config.json
    configs = ("preprocessor_config.json", "processor_config.json")
    if local and not any((Path(source) / name).is_file() for name in configs):
        raise ModelLoadError(
            f"--model {spec!r}: {source!r} has no preprocessor_config.json (save the image "
            "processor beside the model with save_pretrained)"
        )
    with nullcontext() if local else _hub_access(spec):
        if local or pretrained:
            model, info = AutoModelForImageClassification.from_pretrained(
                source, output_loading_info=True
            )
            _check_complete(spec, model, sorted(info["missing_keys"]))
        else:
            model = AutoModelForImageClassification.from_config(AutoConfig.from_pretrained(source))
        processor = AutoImageProcessor.from_pretrained(source)
    id2label = model.config.id2label or {}
    names = [id2label[i] for i in range(len(id2label))] if id2label else None
    synsets = _imagenet_synsets(len(id2label))
    return LoadedModel(
        model, hf_preprocessing(processor), names, synsets, not (local or pretrained)
    )


def _torchvision(name: str, spec: str, pretrained: bool) -> LoadedModel:
    from torchvision import models

    if name not in models.list_models():
        hint = did_you_mean(name, models.list_models())
        raise ModelLoadError(f"--model {spec!r} is not a torchvision model name{hint}")
    weights = models.get_model_weights(name).DEFAULT
    if pretrained:
        cached = Path(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url)).is_file()
        offline = None if cached else _unreachable(weights.url)
        if offline:
            raise _not_downloaded(spec, f"{offline}, and it is not cached")
    try:
        model = models.get_model(name, weights=weights if pretrained else None)
    except OSError as e:  # a download that failed
        raise ModelLoadError(
            f"--model {spec!r}: cannot load the pretrained weights: {_first_line(e)}"
        )
    categories = list(weights.meta.get("categories") or []) or None
    synsets = _imagenet_synsets(len(categories or []))
    preprocessing = torchvision_preprocessing(weights.transforms())
    return LoadedModel(model, preprocessing, categories, synsets, not pretrained)


def _embedded(pretrained: bool) -> LoadedModel:
    from captum_saco.datasets import fashion_mnist_metadata, load_fashion_mnist_vit

    if pretrained:
        raise ModelLoadError(
            f"--pretrained applies to hub models; {EMBEDDED_MODEL} ships its weights"
        )
    try:
        model = load_fashion_mnist_vit()
    except ImportError as e:  # it is a timm ViT
        raise ModelLoadError(f"--model {EMBEDDED_MODEL}: {_first_line(e)}")
    metadata = fashion_mnist_metadata()
    config = metadata["data_config"]
    preprocessing = Preprocessing(  # as fashion_mnist_transform: resized to 28x28, not cropped
        tuple(config["input_size"]),
        tuple(config["mean"]),
        tuple(config["std"]),
        config["interpolation"],
        1.0,
        "squash",
        "the embedded model's data config",
    )
    return LoadedModel(model, preprocessing, metadata["class_names"], None, False)


def _import_callable(spec: str) -> Callable[[], Any]:
    """``module:callable`` (the working directory is searched too, as
    ``python -m`` does) or ``path/to/file.py:callable``."""
    where, _, name = spec.rpartition(":")
    try:
        if where.endswith(".py") or "/" in where or os.sep in where:
            path = Path(where)
            if not path.is_file():
                raise ModelLoadError(f"--model {spec!r}: there is no file {where!r}")
            module_name = f"captum_saco_user_model_{path.stem}"
            loader = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(loader)  # type: ignore[arg-type]
            sys.modules[module_name] = module
            loader.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            if os.getcwd() not in sys.path and "" not in sys.path:
                sys.path.insert(0, os.getcwd())
            module = importlib.import_module(where)
        return getattr(module, name)
    except (ImportError, AttributeError) as e:
        raise ModelLoadError(f"--model {spec!r}: cannot import {name!r} from {where!r} ({e})")


def _callable(spec: str) -> LoadedModel:
    function = _import_callable(spec)
    try:
        model = function()
    except Exception as e:
        raise ModelLoadError(f"--model {spec!r} raised {type(e).__name__}: {_first_line(e)}")
    if not isinstance(model, nn.Module):
        raise ModelLoadError(
            f"--model {spec!r} returned a {type(model).__name__}, not a torch.nn.Module"
        )
    try:
        preprocessing = timm_preprocessing(model)
    except ImportError:
        raise ModelLoadError(
            f"--model {spec!r}: its preprocessing is read with timm: "
            "pip install 'captum-saco[timm]'"
        )
    return LoadedModel(model, preprocessing, None, None, False)


def load_checkpoint(model: nn.Module, path: "str | Path") -> None:
    """Load the weights in ``path`` (a ``torch.save``'d state dict, possibly
    under ``"state_dict"`` or ``"model"`` and with DataParallel's ``module.``
    prefixes, or a ``.safetensors`` file) into ``model``; a ModelLoadError names
    the keys that do not fit."""
    try:
        if str(path).endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelLoadError(f"--checkpoint {str(path)!r}: cannot read it ({_first_line(e)})")
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ModelLoadError(f"--checkpoint {str(path)!r} holds no state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        missing = sorted(set(model.state_dict()) - set(state))[:3]
        unexpected = sorted(set(state) - set(model.state_dict()))[:3]
        detail = f"missing {missing}, unexpected {unexpected}" if missing or unexpected else ""
        raise ModelLoadError(
            f"--checkpoint {str(path)!r} does not fit the model: "
            f"{detail or _first_line(e).removeprefix('Error(s) in loading state_dict for ')}"
        )


def load_model(
    spec: str, pretrained: bool = False, checkpoint: "Optional[str | Path]" = None
) -> LoadedModel:
    r"""
    The model named ``spec`` with its preprocessing and class names.

    Args:
        spec (str): ``"fashion_mnist_vit"`` (the embedded model);
                    ``timm:NAME`` or a bare timm name; ``hf:HUB_ID`` or
                    ``hf:LOCAL_DIR`` (a model and image processor saved with
                    ``save_pretrained``); ``torchvision:NAME``;
                    ``module:callable`` (searched in the working directory
                    too) or ``path/to/file.py:callable``, a function returning
                    the ``nn.Module``, preprocessed by timm's data config of
                    it (a ``pretrained_cfg`` attribute with ``input_size``,
                    ``mean``, ``std``, ``interpolation``, ``crop_pct`` sets it).
        pretrained (bool): load a hub model's trained weights (a local
                    Hugging Face folder always has its own). Default: False,
                    random weights.
        checkpoint (str or Path, optional): weights to load into the model.

    Returns:
        LoadedModel: the model (in eval mode) and what is known of it.

    Raises:
        ModelLoadError: a ValueError saying in one sentence why the model
            cannot be loaded (unknown name, with the closest names; no network
            and no cached copy, within seconds; a timm feature extractor or a
            Hugging Face checkpoint without the weights of its classification
            head, which have no classes to explain; a checkpoint that does not
            fit).

    Examples::

        >>> loaded = load_model("torchvision:resnet18")
        >>> loaded.preprocessing.mean, loaded.class_names[:2], loaded.random_weights
        ((0.485, 0.456, 0.406), ['tench', 'goldfish'], True)
    """
    prefix, colon, rest = spec.partition(":")
    if spec == EMBEDDED_MODEL:
        prefix = EMBEDDED_MODEL
    elif not colon:
        prefix, rest = "timm", spec
    if prefix == EMBEDDED_MODEL:
        loaded = _embedded(pretrained)
    elif prefix == "timm":
        loaded = _timm(rest, spec, pretrained)
    elif prefix == "hf":
        loaded = _hf(rest, spec, pretrained)
    elif prefix == "torchvision":
        loaded = _torchvision(rest, spec, pretrained)
    else:
        if pretrained:
            raise ModelLoadError(
                f"--pretrained applies to hub models (timm:, hf:, torchvision:); {spec!r} "
                "builds its own (use --checkpoint FILE to load weights)"
            )
        loaded = _callable(spec)
    if checkpoint is not None:
        load_checkpoint(loaded.model, checkpoint)
        loaded.random_weights = False
    loaded.model.eval()
    return loaded
