"""Train the digit classifier behind `sgm.metrics.digits` (CPU, seconds, deterministic).

    python scripts/train_digit_classifier.py                      # re-creates the committed weights
    python scripts/train_digit_classifier.py --out /tmp/clf.safetensors --epochs 10 --seed 1

Trains on the "train" split only (+-1 px shifts, light Gaussian noise), reports accuracy on the
held-out split, and writes a safetensors file. Same seed and epochs -> bit-identical weights (one
CPU thread, a seeded generator for every random draw).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sgm.data.digits import load_digits_split  # noqa: E402
from sgm.metrics.digits import DEFAULT_WEIGHTS, DigitClassifier  # noqa: E402


def augment(x: torch.Tensor, generator: torch.Generator, noise_std: float) -> torch.Tensor:
    """Random shift by -1, 0 or +1 px per axis (background -1 enters) plus Gaussian noise."""
    b = len(x)
    padded = F.pad(x, (1, 1, 1, 1), value=-1.0)  # (B, 1, 10, 10)
    dy, dx = torch.randint(0, 3, (2, b, 1), generator=generator)
    rows = (dy + torch.arange(8))[:, :, None]  # (B, 8, 1)
    cols = (dx + torch.arange(8))[:, None, :]  # (B, 1, 8)
    shifted = padded[torch.arange(b)[:, None, None], 0, rows, cols][:, None]  # (B, 1, 8, 8)
    sigma = noise_std * torch.rand(b, 1, 1, 1, generator=generator)  # per-image noise level
    return shifted + sigma * torch.randn(shifted.shape, generator=generator)


@torch.no_grad()
def accuracy(model: DigitClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    return (model(images).argmax(1) == labels).double().mean().item()


def train_classifier(
    epochs: int = 40,  # passes over the training split
    seed: int = 0,  # weight init, batch order and augmentation
    batch_size: int = 64,  # images per step
    lr: float = 3e-3,  # peak AdamW learning rate (cosine decay to 0)
    noise_std: float = 0.15,  # max std of the added Gaussian noise
) -> tuple[DigitClassifier, float]:
    """Returns the trained classifier (eval mode) and its held-out accuracy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # fixed reduction order -> bit-identical weights
    try:
        torch.manual_seed(seed)
        model = DigitClassifier()
        generator = torch.Generator().manual_seed(seed)
        train_x, train_y = (torch.from_numpy(a) for a in load_digits_split("train"))
        train_x = train_x[:, None]  # (N, 1, 8, 8)
        steps_per_epoch = len(train_y) // batch_size
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.1
        )
        for _ in range(epochs):
            model.train()
            order = torch.randperm(len(train_y), generator=generator)
            for step in range(steps_per_epoch):
                idx = order[step * batch_size : (step + 1) * batch_size]
                x = augment(train_x[idx], generator, noise_std)
                loss = F.cross_entropy(model(x), train_y[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
        held_x, held_y = (torch.from_numpy(a) for a in load_digits_split("heldout"))
        return model, accuracy(model, held_x[:, None], held_y)
    finally:
        torch.set_num_threads(threads)


def save_classifier(model: DigitClassifier, path: str | Path, description: str) -> None:
    """safetensors with one metadata entry (several would be written in hash order, not stably), atomically."""
    from sgm.io.checkpoint import atomic_save_safetensors

    state = {k: v.detach() for k, v in model.state_dict().items()}
    atomic_save_safetensors(state, str(path), metadata={"training": description})


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default=str(DEFAULT_WEIGHTS), help="safetensors file to write")
    parser.add_argument("--epochs", type=int, default=40, help="passes over the training split")
    parser.add_argument("--seed", type=int, default=0, help="seed for init, order and augmentation")
    args = parser.parse_args()
    start = time.time()
    model, heldout_acc = train_classifier(epochs=args.epochs, seed=args.seed)
    command = f"train_digit_classifier.py --epochs {args.epochs} --seed {args.seed}"
    save_classifier(model, args.out, f"{command}; heldout_accuracy {heldout_acc:.4f}")
    print(f"held-out accuracy {heldout_acc:.4f} ({time.time() - start:.1f} s) -> {args.out}")


if __name__ == "__main__":
    main()
