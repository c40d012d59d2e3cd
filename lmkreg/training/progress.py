"""Training history: a log file for people and ``progress.png`` for a glance."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tqdm import tqdm  # noqa: E402

from lmkreg.io.atomic import atomic_path  # noqa: E402


class TrainingLog:
    """Per-epoch values (plain lists, so they go into checkpoints) plus a text log."""

    KEYS = ("train_loss", "val_loss", "val_mre", "lr", "epoch_seconds")

    def __init__(self, log_file: Path, landmark_names: Sequence[str], history: Optional[dict] = None,
                 echo: bool = False):
        self.log_file = Path(log_file)
        self.echo = echo  # also print each line (above the progress bar) for people watching the run
        self.names = list(landmark_names)
        self.history: dict[str, list] = history or {k: [] for k in self.KEYS}
        self.history.setdefault("val_mre_per_landmark", [])
        self.history.setdefault("steps", [])  # optimiser steps done at each validation

    def write(self, message: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {message}"
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "a", encoding="utf-8") as f:
            f.write(line + "\n")
        if self.echo:
            tqdm.write(line)

    def add_epoch(self, train_loss: float, val_loss: float, val_mre: float, per_landmark: Sequence[float],
                  lr: float, seconds: float, steps: Optional[int] = None) -> None:
        for k, v in zip(self.KEYS, (train_loss, val_loss, val_mre, lr, seconds)):
            self.history[k].append(float(v))
        self.history["val_mre_per_landmark"].append([float(v) for v in per_landmark])
        if steps is not None:
            self.history["steps"].append(int(steps))

    def plot(self, path: Path) -> None:
        """progress.png: losses, validation MRE (overall and per landmark) and learning rate."""
        h = self.history
        epochs = h["steps"] if len(h.get("steps", [])) == len(h["train_loss"]) else range(len(h["train_loss"]))
        fig, axes = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
        axes[0].plot(epochs, h["train_loss"], label="train loss")
        axes[0].plot(epochs, h["val_loss"], label="validation loss")
        axes[0].set_ylabel("loss")
        axes[0].legend()
        axes[1].plot(epochs, h["val_mre"], color="k", lw=2, label="all landmarks")
        for i, n in enumerate(self.names):
            axes[1].plot(epochs, [r[i] for r in h["val_mre_per_landmark"]], lw=1, label=n)
        axes[1].set_ylabel("validation MRE (mm)")
        axes[1].legend()
        axes[2].plot(epochs, h["lr"])
        axes[2].set_ylabel("learning rate")
        axes[2].set_xlabel("optimiser step" if epochs is h.get("steps") else "epoch")
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=80, format="png")
        plt.close(fig)
