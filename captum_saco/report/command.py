"""The command line's ``--report PATH.html``: the settings of the run as the
report shows them, and the page written by the main process."""

import argparse
import datetime
import importlib.metadata
import platform
from pathlib import Path
from typing import Any, Dict

from torch import nn
from torch.utils.data import Dataset

from captum_saco.evaluation.result import EvaluationResult
from captum_saco.report.examples import explain_examples
from captum_saco.report.render import write_report

#: libraries whose versions the report records, where installed
LIBRARIES = ("captum-saco", "torch", "captum", "numpy", "timm", "transformers", "matplotlib")


def report_path(text: str) -> str:
    """An argparse type: a ``.html`` file name in an existing folder."""
    if Path(text).suffix.lower() not in (".html", ".htm"):
        raise argparse.ArgumentTypeError(f"expected a file name ending in .html, got {text!r}")
    if Path(text).resolve().is_dir() or not Path(text).resolve().parent.is_dir():
        raise argparse.ArgumentTypeError(f"expected a file in an existing folder, got {text!r}")
    return text


def _versions() -> str:
    found = [f"Python {platform.python_version()}"]
    for name in LIBRARIES:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return ", ".join(found)


def _family(model: nn.Module) -> str:
    return f"{type(model).__module__.split('.')[0]} {type(model).__name__}"


def run_settings(
    args: argparse.Namespace, model: nn.Module, result: EvaluationResult
) -> Dict[str, Any]:
    """What the report says of the run, from the command's options."""
    parameter = next(model.parameters(), None)
    cost = result.cost
    wall = cost.get("wall_seconds")
    data = (
        str(args.images)
        if args.images is not None
        else "the shipped Fashion-MNIST test images (embedded)"
    )
    return {
        "model": args.model + (" (pretrained)" if args.pretrained else ""),
        "family": _family(model),
        "parameters": f"{sum(p.numel() for p in model.parameters()):,}",
        "data": data,
        "images": f"{result.n_images} evaluated, {len(result.skipped)} skipped",
        "target": args.target,
        "K (SaCo groups, deletion steps)": args.n_groups,
        "baseline / perturbation": (
            "removed pixels replaced by the per-image, per-channel mean of the input "
            "(SaCo's default)"
        ),
        "precision": "unknown" if parameter is None else str(parameter.dtype).replace("torch.", ""),
        "device": cost.get("device", "unknown"),
        "batch size": args.batch_size,
        "seed": args.seed,
        "methods": ", ".join(result.methods),
        "versions": _versions(),
        "date": cost.get("finished", "unknown"),
        "wall time of the run": "unknown" if wall is None else f"{wall:.1f} s",
        "report rendered": datetime.datetime.now(datetime.timezone.utc).strftime(
            "%Y-%m-%d %H:%M UTC"
        ),
    }


def write_run_report(
    args: argparse.Namespace, result: EvaluationResult, model: nn.Module, data: Dataset
) -> None:
    """Write the report of ``--report`` (on the main process only: the caller's
    ``is_main``), explaining the example images again with ``model``."""
    from captum_saco.cli import CliError

    try:
        examples = explain_examples(model, data, result, args.report_images, args.seed)
        write_report(args.report, result, run_settings(args, model, result), examples)
    except ImportError as e:
        raise CliError(f"--report: {e}")
    except OSError as e:
        raise CliError(f"--report: cannot write {args.report!r}: {e}")
