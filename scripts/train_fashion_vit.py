"""Train the small Vision Transformer that captum-saco ships as its default model.

The model is a stock timm ``VisionTransformer`` (28x28 grey input, 4x4 patches,
4 blocks, width 96, 3 heads, class token with token pooling so the class-token
row of the attention maps is what the classifier reads), trained on
Fashion-MNIST from the Debian package ``dataset-fashion-mnist``.

Training runs for ``--max-steps`` steps (about 3.8 epochs, 10 minutes on 2
free CPU cores) and is time-boxed by ``--time-budget``: the learning rate
follows a linear warm-up and a cosine decay over the training progress, the
larger of the fraction of steps done and the fraction of the time budget
spent, so the schedule always anneals to zero by whichever limit comes first.
Initialisation and data order are seeded, so a run that reaches
``--max-steps`` is reproducible on the same machine and thread count; a run
cut by the time budget stops after a machine-dependent number of steps. Both
are recorded in the metadata.

Outputs, written to ``--output-dir`` (default: the package's data folder):

- ``fashion_vit.pt``: the ``state_dict`` (float32), loadable with
  ``torch.load(..., weights_only=True)``;
- ``fashion_vit.json``: model config, data config (normalisation), class names,
  test accuracy on the full 10k test set, training time, steps and seed;
- ``fashion_mnist_samples.pt``: a stratified sample of labelled test images as
  uint8 (``images`` (N, 28, 28), ``labels`` (N,)) plus their test-set
  ``indices``.

Usage::

    python scripts/train_fashion_vit.py                  # at most 10 min of training
    python scripts/train_fashion_vit.py --time-budget 60 --output-dir /tmp/vit
"""

import argparse
import gzip
import json
import math
import os
import time
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

CLASS_NAMES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]

MODEL_CONFIG: Dict[str, object] = {
    "img_size": 28,
    "patch_size": 4,
    "in_chans": 1,
    "num_classes": 10,
    "embed_dim": 96,
    "depth": 4,
    "num_heads": 3,
    "mlp_ratio": 4.0,
    "qkv_bias": True,
    "class_token": True,
    "global_pool": "token",
}

DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"
DEFAULT_OUTPUT_DIR = Path(__file__).resolve().parent.parent / "captum_saco" / "datasets" / "data"


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (gzip-compressed) as a numpy array."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_split(data_dir: Path, split: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, 28, 28) and int64 labels (N,) of ``train`` or ``t10k``."""
    images = read_idx(data_dir / f"{split}-images-idx3-ubyte.gz")
    labels = read_idx(data_dir / f"{split}-labels-idx1-ubyte.gz")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def normalise(images: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """uint8 (N, 28, 28) -> normalised float (N, 1, 28, 28)."""
    return (images.float().div(255.0).unsqueeze(1) - mean) / std


def lr_at(progress: float, base_lr: float, warmup: float) -> float:
    """Linear warm-up then cosine decay to zero over ``progress`` in [0, 1]."""
    if progress < warmup:
        return base_lr * progress / warmup
    t = min(1.0, (progress - warmup) / (1.0 - warmup))
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * t))


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and shifts of up to 2 pixels (zero-padded in
    normalised space, i.e. filled with the normalised background)."""
    n = x.shape[0]
    flip = torch.rand(n, generator=generator) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    background = x.amin()
    padded = F.pad(x, (2, 2, 2, 2), value=float(background))
    dx, dy = torch.randint(0, 5, (2,), generator=generator).tolist()
    return padded[:, :, dy : dy + 28, dx : dx + 28]


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    model.eval()
    correct = 0
    for i in range(0, x.shape[0], batch):
        correct += int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum())
    return correct / x.shape[0]


def stratified_sample(labels: torch.Tensor, per_class: int, seed: int) -> torch.Tensor:
    """Sorted indices of ``per_class`` seeded-random examples of each class."""
    g = torch.Generator().manual_seed(seed)
    chosen = []
    for c in range(len(CLASS_NAMES)):
        idx = (labels == c).nonzero().flatten()
        chosen.append(idx[torch.randperm(idx.numel(), generator=g)[:per_class]])
    return torch.cat(chosen).sort().values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path(DEFAULT_DATA_DIR))
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT_DIR)
    parser.add_argument(
        "--time-budget", type=float, default=600.0, help="most seconds of training (default 600)"
    )
    parser.add_argument("--max-steps", type=int, default=3600, help="default 3600, ~3.8 epochs")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--warmup", type=float, default=0.05, help="fraction of the progress")
    parser.add_argument(
        "--augment", action="store_true", help="random flips and shifts (helps only past ~5 epochs)"
    )
    parser.add_argument("--samples-per-class", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)

    train_u8, train_y = load_split(args.data_dir, "train")
    test_u8, test_y = load_split(args.data_dir, "t10k")
    pixels = train_u8.float().div(255.0)
    mean, std = float(pixels.mean()), float(pixels.std())
    del pixels
    train_x = normalise(train_u8, mean, std)
    test_x = normalise(test_u8, mean, std)

    model = VisionTransformer(**MODEL_CONFIG)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "pos_embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "pos_embed" in n]
    optimiser = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": args.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=args.lr,
    )
    generator = torch.Generator().manual_seed(args.seed)

    start = time.perf_counter()
    steps = 0
    done = False
    while not done:
        order = torch.randperm(train_x.shape[0], generator=generator)
        model.train()
        for i in range(0, order.numel() - args.batch_size + 1, args.batch_size):
            progress = max(steps / args.max_steps, (time.perf_counter() - start) / args.time_budget)
            if progress >= 1.0:
                done = True
                break
            for group in optimiser.param_groups:
                group["lr"] = lr_at(progress, args.lr, args.warmup)
            idx = order[i : i + args.batch_size]
            x = train_x[idx]
            if args.augment:
                x = augment(x, generator)
            loss = F.cross_entropy(model(x), train_y[idx])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            steps += 1
            if steps % 100 == 0:
                print(
                    f"step {steps} epoch {steps * args.batch_size / order.numel():.2f} "
                    f"loss {loss.item():.3f} t {time.perf_counter() - start:.0f}s",
                    flush=True,
                )
    train_time = time.perf_counter() - start
    epochs_done = steps * args.batch_size / train_x.shape[0]

    test_acc = accuracy(model, test_x, test_y)
    print(f"test accuracy (10k): {test_acc:.4f} after {steps} steps, {train_time:.0f}s")

    sample_idx = stratified_sample(test_y, args.samples_per_class, args.seed)
    sample_acc = accuracy(model, test_x[sample_idx], test_y[sample_idx])
    print(f"accuracy on the {sample_idx.numel()} shipped test images: {sample_acc:.4f}")

    args.output_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    torch.save(state, args.output_dir / "fashion_vit.pt")
    torch.save(
        {
            "images": test_u8[sample_idx].clone(),
            "labels": test_y[sample_idx].to(torch.uint8),
            "indices": sample_idx.to(torch.int64),
        },
        args.output_dir / "fashion_mnist_samples.pt",
    )
    metadata = {
        "architecture": "timm.models.vision_transformer.VisionTransformer",
        "model_config": MODEL_CONFIG,
        "data_config": {
            "input_size": [1, 28, 28],
            "interpolation": "bilinear",
            "mean": [round(mean, 6)],
            "std": [round(std, 6)],
            "crop_pct": 1.0,
            "crop_mode": "center",
        },
        "class_names": CLASS_NAMES,
        "dataset": "Fashion-MNIST (Debian package dataset-fashion-mnist, MIT licence)",
        "test_accuracy": round(test_acc, 4),
        "sample_accuracy": round(sample_acc, 4),
        "n_samples": int(sample_idx.numel()),
        "training": {
            "script": "scripts/train_fashion_vit.py",
            "seed": args.seed,
            "time_budget_s": args.time_budget,
            "max_steps": args.max_steps,
            "train_time_s": round(train_time, 1),
            "steps": steps,
            "epochs": round(epochs_done, 2),
            "batch_size": args.batch_size,
            "optimizer": f"AdamW(lr={args.lr}, weight_decay={args.weight_decay})",
            "schedule": f"linear warm-up ({args.warmup:.0%} of the progress) + cosine to 0",
            "augmentation": "hflip + shift<=2px" if args.augment else "none",
            "threads": args.threads,
            "torch": torch.__version__,
        },
    }
    with open(args.output_dir / "fashion_vit.json", "w") as f:
        json.dump(metadata, f, indent=2)
        f.write("\n")
    weights_bytes = os.path.getsize(args.output_dir / "fashion_vit.pt")
    print(f"wrote {args.output_dir} ({weights_bytes} bytes of weights)")


if __name__ == "__main__":
    main()
