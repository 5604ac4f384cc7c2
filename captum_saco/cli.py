"""``python -m captum_saco`` / ``captum-saco``: which explanation of my model
can I trust?

Evaluates explanation methods with faithfulness metrics on a model and
images, and prints the table (methods x metrics: mean ± std and the count of
undefined values). With no arguments it runs offline on the embedded
Fashion-MNIST ViT and its shipped test images. Under ``torchrun`` the images
are sharded across the processes (gloo on the CPU, NCCL on GPUs) and the
first process prints and writes the gathered table.
"""

import argparse
import os
import signal
import sys
import tempfile
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

from captum_saco.evaluation import (
    DEFAULT_METHODS,
    DEFAULT_METRICS,
    METHODS,
    METRICS,
    EvaluationResult,
    evaluate,
    saco_case_study,
)
from captum_saco.evaluation.data import Source
from captum_saco.evaluation.registry import logits_of
from captum_saco.models.loading import (
    EMBEDDED_MODEL,
    LoadedModel,
    ModelLoadError,
    did_you_mean,
    load_model,
)
from captum_saco.models.preprocessing import INTERPOLATIONS, Preprocessing, timm_preprocessing
from captum_saco.report.command import report_path, write_run_report
from captum_saco.visualization import plot_evaluation

DEFAULT_LIMIT = 200


class CliError(Exception):
    """A usage error: a problem the user can fix, reported as one sentence
    without a traceback (exit status 2). Any other exception is a bug and
    keeps its traceback."""


def _names(option: str, values: Optional[List[str]], default: Sequence[str]) -> List[str]:
    if values is None:
        return list(default)
    names = [name for value in values for name in value.split(",") if name]
    if not names:
        raise CliError(f"{option} expects at least one name, got {' '.join(values)!r}")
    return names


def _int_in(low: int, high: int, what: str) -> Callable[[str], int]:
    """An argparse type: an int in ``[low, high]``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    return parse


_positive_int = _int_in(1, sys.maxsize, "a positive integer")


def _int_list(item: Callable[[str], int]) -> Callable[[str], List[int]]:
    """An argparse type: comma-separated ints, each parsed by ``item``."""
    return lambda text: [item(part.strip()) for part in text.split(",")]


class _FirstAndAll(argparse.Action):
    """Stores a list option's first value as ``dest`` and all as ``dest_all``."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option: Any = None) -> None:
        setattr(namespace, self.dest, values[0])
        setattr(namespace, f"{self.dest}_all", values)


def _positive_float(text: str) -> float:
    """An argparse type: a float > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _note(text: str) -> None:
    """Say something the user should know, once (on the first process)."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"captum-saco: {text}", file=sys.stderr, flush=True)


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    """--model, --pretrained, --images, --limit, --target, --workers."""
    parser.add_argument(
        "--model",
        default=EMBEDDED_MODEL,
        help=(
            "timm:NAME (or a bare timm name), hf:HUB_ID_OR_LOCAL_DIR, torchvision:NAME, "
            "module:callable (the working directory is searched) or path/to/file.py:callable "
            "returning a torch.nn.Module (preprocessed by timm's data config of it: give it a "
            "pretrained_cfg attribute); each is preprocessed as it was trained; default: the "
            f"embedded {EMBEDDED_MODEL}"
        ),
    )
    parser.add_argument(
        "--pretrained",
        action="store_true",
        help="load a hub model's trained weights (without it, timm:, hf:HUB_ID and "
        "torchvision: models have random weights)",
    )
    parser.add_argument(
        "--checkpoint", metavar="FILE", help="load these weights (a state dict) into the model"
    )
    parser.add_argument(
        "--images",
        type=Path,
        help=(
            "a folder of images, flat or one subfolder per class (ImageFolder layout), read "
            "as a stream and resized and normalised by the model's data config; default: "
            "the shipped Fashion-MNIST test images (embedded model only)"
        ),
    )
    parser.add_argument(
        "--limit",
        type=_positive_int,
        help=(
            "evaluate the first N images (default: every file of --images, or the first "
            f"{DEFAULT_LIMIT} shipped images)"
        ),
    )
    parser.add_argument(
        "--target",
        choices=["predicted", "label"],
        default="predicted",
        help=(
            "the class explained and scored: the model's prediction (default, the paper's "
            "setting) or the true label (needs class subfolders in --images)"
        ),
    )
    parser.add_argument(
        "--zero-shot",
        metavar="CLASSES",
        help=(
            "explain a CLIP or SigLIP (--model hf:NAME_OR_PATH or open_clip:ARCH/PRETRAINED, "
            "e.g. open_clip:ViT-B-32/openai) as a zero-shot classifier over these classes: "
            "comma-separated names, or a file with one name per line"
        ),
    )
    parser.add_argument(
        "--prompt-template",
        help="the prompt of each --zero-shot class, {} for its name (default: 'a photo of a {}.')",
    )
    parser.add_argument(
        "--class-map",
        metavar="FILE",
        type=Path,
        help=(
            "a JSON object of class folder -> the model's class index (default: the folders "
            "named by the model's class names or ImageNet synsets, else in sorted order)"
        ),
    )
    parser.add_argument(
        "--workers",
        type=_int_in(0, 1024, "a non-negative integer"),
        default=0,
        help="processes reading --images (default 0: read in the main process)",
    )


def _add_preprocessing_options(parser: argparse.ArgumentParser) -> None:
    """--input-size, --mean, --std, --interpolation, --crop-pct: overrides of
    the model's own preprocessing."""
    group = parser.add_argument_group(
        "preprocessing", "override the model's own preprocessing of --images"
    )
    group.add_argument("--input-size", type=_positive_int, metavar="N", help="N x N pixels")
    group.add_argument("--mean", type=float, nargs="+", help="one value per channel")
    group.add_argument("--std", type=_positive_float, nargs="+", help="one value per channel")
    group.add_argument("--interpolation", choices=INTERPOLATIONS, help="the resize filter")
    group.add_argument(
        "--crop-pct",
        type=_positive_float,
        help="the share of the resized image kept by the centre crop, in (0, 1]",
    )


def _add_evaluation_options(parser: argparse.ArgumentParser) -> None:
    """--methods, --metrics, --n-groups, --batch-size, --device, --seed."""
    parser.add_argument(
        "--methods",
        nargs="+",
        metavar="NAME",
        help="explanation methods (comma- or space-separated)",
    )
    parser.add_argument(
        "--metrics", nargs="+", metavar="NAME", help="metrics (comma- or space-separated)"
    )
    parser.add_argument(
        "--n-groups",
        type=_int_list(_int_in(2, sys.maxsize, "integers >= 2")),
        action=_FirstAndAll,
        default=10,
        metavar="K[,K...]",
        help=(
            "SaCo groups / deletion steps (default 10); several, e.g. 5,10,20: a table per K "
            "and the methods' rank stability across them"
        ),
    )
    parser.set_defaults(n_groups_all=[10])
    parser.add_argument(
        "--perturbation",
        type=lambda text: [part.strip() for part in text.split(",")],
        default=["baseline"],
        metavar="NAME[,NAME...]",
        help=(
            "how the metrics remove features: baseline (default), blur, noisy_linear, "
            "token_drop; several: a table per perturbation and the methods' rank stability"
        ),
    )
    parser.add_argument(
        "--batch-size", type=_positive_int, default=16, help="images explained at once (default 16)"
    )
    parser.add_argument(
        "--device", help="e.g. cpu, cuda, cuda:1 (default: cuda if available, else cpu)"
    )
    parser.add_argument(
        "--seed",
        type=_int_in(0, 2**62, "an integer in [0, 2**62]"),
        default=0,
        help="seed of random attribution (default 0)",
    )


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    """--output, --plot, --per-image, --resume, --no-progress."""
    parser.add_argument("--output", help="write the table to FILE (.json, .csv or .md)")
    parser.add_argument(
        "--plot",
        help="write a PNG: bars per method and metric, and SaCo's case study of the first image",
    )
    parser.add_argument(
        "--per-image",
        metavar="FILE",
        help=(
            "write one row per image and method to FILE (.jsonl or .csv), batch by batch: "
            "image, label, target, probability, method, then each metric"
        ),
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="with --per-image: skip the images already in FILE and finish the run",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument(
        "--report",
        type=report_path,
        metavar="PATH.html",
        help=(
            "write one self-contained HTML page of the run: settings, results, cost, "
            "comparisons, distributions, deletion curves and example explanations (with "
            "--resume on a finished --per-image run: re-rendered without rerunning the model)"
        ),
    )
    parser.add_argument(
        "--report-images",
        type=_int_in(0, 1000, "an integer in [0, 1000]"),
        default=3,
        metavar="N",
        help="random example images in the report, besides the best, median and worst (default 3)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="captum-saco",
        description=(
            "Evaluate the faithfulness of explanation methods with SaCo and the "
            "cumulative deletion metrics. With no arguments: the embedded "
            "Fashion-MNIST ViT on its shipped test images, offline."
        ),
        epilog=f"methods: {', '.join(METHODS)}; metrics: {', '.join(METRICS)}",
    )
    for add_options in (
        _add_data_options,
        _add_preprocessing_options,
        _add_evaluation_options,
        _add_output_options,
    ):
        add_options(parser)
    return parser


def _check_writable(option: str, path: str, suffixes: Sequence[str]) -> None:
    """Fail before any work if ``path`` cannot be written."""
    if Path(path).suffix.lower() not in suffixes:
        endings = ", ".join(suffixes[:-1]) + " or " if len(suffixes) > 1 else ""
        raise CliError(f"{option} must end in {endings}{suffixes[-1]}, got {path!r}")
    target = Path(path).resolve()
    if target.is_dir():
        raise CliError(f"{option}: {path!r} is a folder, not a file name")
    if not target.parent.is_dir():
        raise CliError(f"{option}: the folder of {path!r} does not exist")
    try:
        # The result is written to a temporary file in the same folder first.
        with tempfile.NamedTemporaryFile(dir=target.parent, prefix=".captum-saco-"):
            pass
    except OSError as e:
        raise CliError(f"{option}: cannot write in the folder of {path!r} ({e.strerror or e})")
    if target.exists() and not os.access(target, os.W_OK):
        raise CliError(f"{option}: {path!r} is not writable")


def _check_output_paths(args: argparse.Namespace) -> None:
    if args.output is not None:
        _check_writable("--output", args.output, (".json", ".csv", ".md"))
    if args.plot is not None:
        _check_writable("--plot", args.plot, (".png",))
    if args.per_image is not None:
        _check_writable("--per-image", args.per_image, (".jsonl", ".csv"))
        _check_writable("--per-image", f"{args.per_image}.settings.json", (".json",))
        if args.output is not None and Path(args.output).resolve() in (
            Path(args.per_image).resolve(),
            Path(f"{args.per_image}.settings.json").resolve(),
        ):
            raise CliError(
                f"--output {args.output!r} would overwrite the per-image results of "
                f"--per-image {args.per_image!r}; give them different files"
            )
    elif args.resume:
        raise CliError("--resume needs --per-image FILE, the results to resume from")


def _check_names(methods: List[str], metrics: List[str]) -> None:
    for kind, names, known in (("method", methods, METHODS), ("metric", metrics, METRICS)):
        for name in names:
            if name not in known:
                raise CliError(
                    f"unknown {kind} {name!r}{did_you_mean(name, list(known))}; "
                    f"choose from {', '.join(known)}"
                )


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _load_model(args: argparse.Namespace) -> LoadedModel:
    """The model of --model, --pretrained and --checkpoint; says once when its
    weights are random."""
    try:
        loaded = load_model(args.model, args.pretrained, args.checkpoint)
    except ModelLoadError as e:
        raise CliError(str(e))
    return loaded


def _random_weights_note(args: argparse.Namespace, loaded: LoadedModel) -> List[str]:
    if loaded.random_weights:
        return [
            f"--model {args.model!r} has random weights (add --pretrained or --checkpoint "
            "FILE for trained ones)"
        ]
    return []


def _preprocessing(args: argparse.Namespace, loaded: LoadedModel) -> Preprocessing:
    """The model's own preprocessing with the options' overrides."""
    try:
        preprocessing = loaded.preprocessing.overridden(
            args.input_size, args.mean, args.std, args.interpolation, args.crop_pct
        )
    except ValueError as e:
        option, _, rest = str(e).partition(": ")
        raise CliError(f"--{option.replace('_', '-')}: {rest}")
    return preprocessing


def _zero_shot_or_load(args: argparse.Namespace) -> LoadedModel:
    """The zero-shot classifier of --model over the --zero-shot classes, or --model."""
    if args.zero_shot is None:
        if args.prompt_template is not None:
            raise CliError("--prompt-template applies only with --zero-shot")
        return _load_model(args)
    from captum_saco.models import load_zero_shot_classifier

    path = Path(args.zero_shot)
    text = path.read_text(encoding="utf-8") if path.is_file() else args.zero_shot
    names = [name.strip() for name in text.replace("\n", ",").split(",") if name.strip()]
    options = {
        "model_name": "--model",
        "class_names": "--zero-shot",
        "template": "--prompt-template",
    }
    try:
        classifier = load_zero_shot_classifier(
            args.model, names, args.prompt_template or "a photo of a {}."
        )
    except ValueError as e:
        argument, _, rest = _first_line(e).partition(": ")
        raise CliError(f"{options.get(argument, '--model')}: {rest or _first_line(e)}")
    except (ImportError, OSError) as e:  # library missing, no network, no such folder
        raise CliError(f"--model {args.model!r} cannot be loaded: {_first_line(e)}")
    # its processor's settings, as a timm data config in pretrained_cfg
    return LoadedModel(classifier.eval(), timm_preprocessing(classifier), names, None, False)



def _class_to_idx(
    args: argparse.Namespace, loaded: LoadedModel, notes: List[str]
) -> Optional[Dict[str, int]]:
    """The label of each class folder of --images: --class-map, else the
    model's index of the class each folder names, else None (sorted order,
    in ``notes``)."""
    from captum_saco.datasets import class_indices, read_class_map

    if args.class_map is not None:
        try:
            return read_class_map(args.class_map)
        except ValueError as e:
            raise CliError(f"--class-map {str(e).removeprefix('class_map: ')}")
    folders = sorted(
        p.name for p in args.images.iterdir() if p.is_dir() and not p.name.startswith(".")
    )
    if not folders:
        return None
    mapping = class_indices(folders, loaded.class_names, loaded.synsets)
    if mapping is None:
        notes.append(
            f"labels: the class folders of --images are not all classes of --model "
            f"{args.model!r} by name or synset; they are labelled 0 to {len(folders) - 1} in "
            "sorted order (--class-map FILE sets them)"
        )
    return mapping


def _load_images(
    args: argparse.Namespace, loaded: LoadedModel, preprocessing: Preprocessing, notes: List[str]
) -> Dataset:
    from captum_saco.datasets import ImageFiles

    # (ImageFiles refuses a --images that is not a folder)
    class_to_idx = _class_to_idx(args, loaded, notes) if args.images.is_dir() else None
    try:
        return ImageFiles(
            args.images,
            preprocessing.transform(),
            preprocessing.mode,
            limit=args.limit,
            class_to_idx=class_to_idx,
        )
    except ValueError as e:
        message = str(e)
        if message.startswith("class_to_idx: "):
            raise CliError(f"--class-map {str(args.class_map)!r}: {message.partition(': ')[2]}")
        raise CliError(f"--images {message.removeprefix('root: ')}")


def _check_model_accepts(name: str, model: nn.Module, x: Tensor) -> int:
    """Fail with one sentence if the model cannot classify the prepared images;
    returns its number of outputs."""
    try:
        with torch.no_grad():
            output = logits_of(model)(x)
    except Exception as e:
        raise CliError(
            f"--model {name!r} does not accept the images as prepared for it "
            f"({'x'.join(map(str, x.shape[1:]))}): {_first_line(e)}"
        )
    if not isinstance(output, Tensor) or output.dim() != 2:
        raise CliError(
            f"--model {name!r} must return (N, classes) logits, got "
            + (
                f"shape {tuple(output.shape)}"
                if isinstance(output, Tensor)
                else type(output).__name__
            )
        )
    return output.shape[1]


def _check_n_groups(n_groups: int, x: Tensor) -> None:
    """Fail with one sentence if the images have fewer pixels (the features
    ranked) than ``n_groups``: every image is prepared to the same size."""
    pixels = x.shape[-2] * x.shape[-1]
    if n_groups > pixels:
        raise CliError(
            f"--n-groups {n_groups} exceeds the {pixels} pixels of an image as prepared "
            f"for the model ({'x'.join(map(str, x.shape[1:]))}); choose 2 to {pixels}"
        )


def _load_data(
    args: argparse.Namespace,
    loaded: LoadedModel,
    preprocessing: Optional[Preprocessing],
    notes: List[str],
) -> Dataset:
    if preprocessing is not None:
        return _load_images(args, loaded, preprocessing, notes)
    if args.model != EMBEDDED_MODEL:
        raise CliError("--model needs --images: the shipped images fit only the embedded model")
    from captum_saco.datasets import load_fashion_mnist_samples

    samples = load_fashion_mnist_samples(limit=args.limit or DEFAULT_LIMIT)
    return TensorDataset(samples.images, samples.labels)


def _first_image(args: argparse.Namespace, data: Dataset) -> Tensor:
    """The first readable image, ``(1, ...)``."""
    try:
        return Source(data).first_image()[1][None]
    except ValueError:
        raise CliError(f"--images {str(args.images)!r} holds no readable image")


def _check_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CliError(f"--device {name!r} is not a device (e.g. cpu, cuda, cuda:1)")
    if device.type == "meta":
        raise CliError("--device meta holds no data to evaluate; use cpu or an accelerator")
    if device.type == "mps":
        available = torch.backends.mps.is_available()
    else:
        backend = getattr(torch, device.type, None)
        available = device.type == "cpu" or bool(getattr(backend, "is_available", bool)())
    if not available:
        raise CliError(f"--device {name!r}: {device.type.upper()} is not available here")
    return device


def _setup_device(requested: Optional[str]) -> Tuple[torch.device, bool]:
    """The device of this process, and whether this run is distributed
    (initialising the process group under ``torchrun``)."""
    device = _check_device(requested or ("cuda" if torch.cuda.is_available() else "cpu"))
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed and not dist.is_initialized():
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
            dist.init_process_group("nccl")
        else:
            dist.init_process_group("gloo")
    return device, distributed


def _write_outputs(
    args: argparse.Namespace,
    result: EvaluationResult,
    model: nn.Module,
    first: Tensor,
    methods: List[str],
) -> None:
    if args.output is not None:
        try:
            result.save(args.output)
        except OSError as e:
            raise CliError(f"--output: cannot write {args.output!r}: {e}")
    if args.plot is not None:
        study = saco_case_study(model, first, 0, methods, n_groups=args.n_groups, seed=args.seed)
        try:
            plot_evaluation(result, args.plot, study, first[0])
        except ImportError as e:
            raise CliError(f"--plot: {e}")
        except OSError as e:
            raise CliError(f"--plot: cannot write {args.plot!r}: {e}")


def _check_target(args: argparse.Namespace, data: Dataset) -> None:
    if args.target == "label" and getattr(data, "classes", None) == []:
        raise CliError(
            f"--target label needs class subfolders in --images; {str(args.images)!r} is flat"
        )


def _check_labels_fit(args: argparse.Namespace, data: Dataset, outputs: int) -> None:
    """Fail before any work if ``--target label`` names classes the model lacks."""
    samples = getattr(data, "samples", None) or []
    label = max((label for _, label in samples), default=-1)
    if args.target == "label" and label >= outputs:
        raise CliError(
            f"--target label: --images {str(args.images)!r} holds class {label} and --model "
            f"{args.model!r} has {outputs} outputs; name the folders by the model's classes "
            "or give --class-map FILE"
        )


#: evaluate()'s arguments by the options that set them, to name the option in errors
_OPTIONS = {
    "per_image_file": "--per-image",
    "targets": "--target",
    "n_groups": "--n-groups",
    "perturbation": "--perturbation",
    "batch_size": "--batch-size",
    "workers": "--workers",
    "seed": "--seed",
    "methods": "--methods",
    "metrics": "--metrics",
    "model": "--model",
    "inputs": "--images",
}


def _as_option_error(error: ValueError) -> Optional[CliError]:
    """``evaluate``'s refusal of an argument (its message opens with the
    argument's name), said of the option that set it; None for another error,
    a library bug, which keeps its traceback."""
    argument, _, rest = _first_line(error).partition(": ")
    return CliError(f"{_OPTIONS[argument]}: {rest}") if argument in _OPTIONS and rest else None


def _defined_defaults(
    args: argparse.Namespace, model: nn.Module, first: Tensor, methods: List[str], notes: List[str]
) -> List[str]:
    """Without ``--methods``, the default methods that the model's family defines:
    each is tried on the first image, and those that refuse the model by name
    (an explanation method with no definition for it, such as the attention maps
    of a Swin Transformer) are left out, said in a note. Methods named with
    ``--methods`` run as given (a refused one is an error)."""
    if args.methods is not None:
        return methods
    kept, refused, reason = [], [], ""
    for name in methods:
        try:
            METHODS[name](model, args.seed)(first, torch.zeros(1, dtype=torch.long), torch.zeros(1))
        except ValueError as e:
            if not str(e).startswith("model: "):
                raise
            refused.append(name)
            reason = reason or _first_line(e)[len("model: ") :]
            continue
        kept.append(name)
    if refused:
        notes.append(
            f"--methods: the default methods {', '.join(refused)} are not defined for this model "
            f"and are left out ({reason})"
        )
    return kept


def run(args: argparse.Namespace) -> int:
    methods = _names("--methods", args.methods, DEFAULT_METHODS)
    metrics = _names("--metrics", args.metrics, DEFAULT_METRICS)
    _check_names(methods, metrics)
    _check_output_paths(args)
    device, distributed = _setup_device(args.device)
    try:
        is_main = not distributed or dist.get_rank() == 0
        loaded = _zero_shot_or_load(args)
        model = loaded.model.to(device)
        notes = _random_weights_note(args, loaded)
        preprocessing = None if args.images is None else _preprocessing(args, loaded)
        if preprocessing is not None:
            notes.append(f"preprocessing ({preprocessing.source}): {preprocessing.describe()}")
        data = _load_data(args, loaded, preprocessing, notes)
        _check_target(args, data)
        first = _first_image(args, data).to(device)
        _check_labels_fit(args, data, _check_model_accepts(args.model, model, first))
        _check_n_groups(args.n_groups, first)
        methods = _defined_defaults(args, model, first, methods, notes)
        try:
            result = evaluate(
                model,
                data,
                targets=args.target,
                methods=methods,
                metrics=metrics,
                n_groups=args.n_groups_all,
                perturbation=args.perturbation,
                batch_size=args.batch_size,
                seed=args.seed,
                progress=not args.no_progress,
                model_name=args.model,
                workers=args.workers,
                per_image_file=args.per_image,
                resume=args.resume,
                preprocessing=None if preprocessing is None else preprocessing.to_dict(),
            )
        except ValueError as e:
            refusal = _as_option_error(e)
            if refusal is None:
                raise
            raise refusal from None
        for note in notes:  # once, after the run (a refused argument stays one line)
            _note(note)
        if is_main:
            print(result)
            _write_outputs(args, result, model, first, methods)
            if args.report is not None:
                write_run_report(args, result, model, data)
    finally:
        if distributed and dist.is_initialized():
            dist.destroy_process_group()
    return 0


class _Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's kill, torchrun's shutdown), handled as Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Turn SIGTERM into an exception, so that the run stops as on Ctrl-C:
    the batch under way is dropped and the per-image file stays valid."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise _Terminated(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _one_line_warnings() -> Iterator[None]:
    """Format each warning as one line, ``captum-saco: warning: MESSAGE``,
    without the file, line and source line that Python's format adds."""
    previous = warnings.formatwarning

    def one_line(message: Any, *args: Any, **kwargs: Any) -> str:
        return f"captum-saco: warning: {' '.join(str(message).split())}\n"

    warnings.formatwarning = one_line  # type: ignore[assignment]
    try:
        yield
    finally:
        warnings.formatwarning = previous


def _interrupted(args: argparse.Namespace, error: KeyboardInterrupt) -> int:
    signum = getattr(error, "signum", signal.SIGINT)
    if args.per_image is None:
        hint = (
            "nothing was kept; with --per-image FILE a rerun with --resume keeps finished batches"
        )
    else:
        again = "the same command" if args.resume else "the same command with --resume"
        hint = f"the finished batches are in {args.per_image}; rerun {again} to finish"
    if int(os.environ.get("RANK", "0")) == 0:  # once for all the processes of torchrun
        print(
            f"captum-saco: interrupted by {signal.Signals(signum).name}; {hint}",
            file=sys.stderr,
            flush=True,
        )
    return 128 + signum


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command; returns the exit status (0 on success, 2 on a
    problem the user can fix, reported as one sentence on stderr, 128 +
    the signal's number when interrupted by SIGINT or SIGTERM)."""
    args = build_parser().parse_args(argv)
    try:
        with _sigterm_interrupts(), _one_line_warnings():
            return run(args)
    except CliError as e:
        print(f"captum-saco: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        return _interrupted(args, e)
