"""Train the small CLIP-style model that captum-saco ships for zero-shot examples.

The model is a stock Hugging Face ``CLIPModel`` (image tower: 28x28 grey
input, 4x4 patches, 4 pre-norm blocks of width 64 with 4 heads, class-token
pooling and a projection; text tower: 2 causal blocks of width 32 over a
character-level CLIP tokenizer; 32-dimensional joint space), trained on
Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` with the class
names as prompts: each step encodes the ten prompts ``template.format(name)``
of one template drawn from ``TEMPLATES`` and minimises the cross-entropy of
each image's ``logit_scale * cos(image, prompt)`` over the ten prompts (CLIP's
image-to-text loss with one caption per class), so that
``ZeroShotClassifier.from_prompts`` with the class names reproduces the
training objective. The images are normalised as the embedded ViT's
(``fashion_vit.json``), so the shipped samples feed both models.

Learning rate: linear warm-up and cosine decay over the training progress, the
larger of the fraction of ``--max-steps`` done and the fraction of
``--time-budget`` spent. Seeded; a run cut by the time budget stops after a
machine-dependent number of steps, recorded in the metadata.

Outputs, written to ``--output-dir`` (default: the package's
``datasets/data/fashion_clip`` folder): the model's ``save_pretrained`` files,
the tokenizer's, and ``training.json`` (test accuracy on the full 10k test set
with the default template, per-template accuracies, time, steps, seed).

Usage::

    python scripts/train_fashion_clip.py                  # about 4.5 min, 1 thread
    python scripts/train_fashion_clip.py --time-budget 30 --output-dir /tmp/clip
"""

import argparse
import json
import time
from pathlib import Path
from typing import Dict, List

import torch
import torch.nn.functional as F
from train_fashion_vit import CLASS_NAMES, DEFAULT_DATA_DIR, load_split, lr_at, normalise
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

TEMPLATES: List[str] = [
    "a photo of a {}.",
    "{}",
    "a picture of a {}.",
    "a grey photo of a {}.",
    "an item of clothing: {}.",
]

PACKAGE_DATA = Path(__file__).resolve().parent.parent / "captum_saco" / "datasets" / "data"


def character_tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer (lower-casing, CLIP's pre-tokenisation) over single
    printable ASCII characters: no merges, so every word is spelled out."""
    chars = [chr(c) for c in range(33, 127)]
    vocab: Dict[str, int] = {}
    for suffix in ("", "</w>"):
        for c in chars:
            vocab[c + suffix] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[])


def build_model(tokenizer: CLIPTokenizer) -> CLIPModel:
    sot = tokenizer.convert_tokens_to_ids("<|startoftext|>")
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = CLIPConfig(
        projection_dim=32,
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=48,
            bos_token_id=sot,
            eos_token_id=eot,
            pad_token_id=eot,
        ),
        vision_config=dict(
            image_size=28,
            patch_size=4,
            num_channels=1,
            hidden_size=64,
            intermediate_size=256,
            num_hidden_layers=4,
            num_attention_heads=4,
        ),
    )
    return CLIPModel(config)


def prompt_logits(
    model: CLIPModel, tokens: Dict[str, torch.Tensor], x: torch.Tensor
) -> torch.Tensor:
    image = F.normalize(model.get_image_features(pixel_values=x).pooler_output, dim=-1)
    text = F.normalize(model.get_text_features(**tokens).pooler_output, dim=-1)
    return model.logit_scale.exp() * image @ text.T


@torch.no_grad()
def accuracy(
    model: CLIPModel, tokens: Dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
) -> float:
    model.eval()
    correct = 0
    for i in range(0, x.shape[0], 1000):
        correct += int(
            (prompt_logits(model, tokens, x[i : i + 1000]).argmax(1) == y[i : i + 1000]).sum()
        )
    return correct / x.shape[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path(DEFAULT_DATA_DIR))
    parser.add_argument("--output-dir", type=Path, default=PACKAGE_DATA / "fashion_clip")
    parser.add_argument(
        "--time-budget", type=float, default=270.0, help="most seconds (default 270)"
    )
    parser.add_argument("--max-steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--warmup", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    with open(PACKAGE_DATA / "fashion_vit.json", encoding="utf-8") as f:
        data_config = json.load(f)["data_config"]
    mean, std = data_config["mean"][0], data_config["std"][0]
    train_u8, train_y = load_split(args.data_dir, "train")
    test_u8, test_y = load_split(args.data_dir, "t10k")
    train_x, test_x = normalise(train_u8, mean, std), normalise(test_u8, mean, std)

    tokenizer = character_tokenizer()
    model = build_model(tokenizer)
    prompts = [
        dict(tokenizer([t.format(c) for c in CLASS_NAMES], padding=True, return_tensors="pt"))
        for t in TEMPLATES
    ]
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "position" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "position" in n]
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
            template = int(torch.randint(len(TEMPLATES), (1,), generator=generator))
            loss = F.cross_entropy(
                prompt_logits(model, prompts[template], train_x[idx]), train_y[idx]
            )
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            with torch.no_grad():  # CLIP's clamp of the temperature
                model.logit_scale.clamp_(0, 4.6052)
            steps += 1
            if steps % 100 == 0:
                print(
                    f"step {steps} loss {loss.item():.3f} t {time.perf_counter() - start:.0f}s",
                    flush=True,
                )
    train_time = time.perf_counter() - start
    per_template = {
        t: round(accuracy(model, p, test_x, test_y), 4) for t, p in zip(TEMPLATES, prompts)
    }
    print(
        f"zero-shot test accuracy (10k) per template: {per_template}; "
        f"{steps} steps, {train_time:.0f}s"
    )

    args.output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.output_dir)
    tokenizer.save_pretrained(args.output_dir)
    training = {
        "architecture": "transformers.CLIPModel",
        "class_names": CLASS_NAMES,
        "templates": TEMPLATES,
        "data_config": data_config,
        "dataset": "Fashion-MNIST (Debian package dataset-fashion-mnist, MIT licence)",
        "test_accuracy": per_template[TEMPLATES[0]],
        "test_accuracy_per_template": per_template,
        "logit_scale": round(float(model.logit_scale.detach().exp()), 4),
        "training": {
            "script": "scripts/train_fashion_clip.py",
            "loss": "cross-entropy of logit_scale * cos(image, prompt) over the ten class prompts",
            "seed": args.seed,
            "time_budget_s": args.time_budget,
            "max_steps": args.max_steps,
            "train_time_s": round(train_time, 1),
            "steps": steps,
            "epochs": round(steps * args.batch_size / train_x.shape[0], 2),
            "batch_size": args.batch_size,
            "optimizer": f"AdamW(lr={args.lr}, weight_decay={args.weight_decay})",
            "schedule": f"linear warm-up ({args.warmup:.0%} of the progress) + cosine to 0",
            "threads": args.threads,
            "torch": torch.__version__,
        },
    }
    with open(args.output_dir / "training.json", "w", encoding="utf-8") as f:
        json.dump(training, f, indent=2)
        f.write("\n")
    print(f"wrote {args.output_dir}")


if __name__ == "__main__":
    main()
