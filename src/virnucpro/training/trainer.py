"""The MLP training loop of the original (SPEC 1.5), deterministic and resumable per epoch.

Xavier-uniform init of both linear layers, cross-entropy, SGD (lr 2e-4, momentum 0.9),
StepLR(step 10, gamma 0.85), batch 32, up to 200 epochs, early stopping on validation loss
(patience 5). Unlike the original, the best weights are a real copy (the original kept a
reference to the live ``state_dict()``, so its restore restored the last epoch's weights).

Determinism: the model is built under ``torch.manual_seed(seed)`` and its linear weights drawn
from a seeded ``torch.Generator``; epoch e visits the rows in the order drawn from
``numpy.random.default_rng([seed, e])``; dropout uses torch's global generator, whose state is
saved in each checkpoint. After every epoch one atomic checkpoint holds the model, optimizer,
scheduler, RNG state, early-stopping state and the log: a run killed at any point resumes
from its last completed epoch and ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import copy
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from virnucpro.errors import VirnucproError
from virnucpro.io.atomic import atomic_path
from virnucpro.models.classifier import DEFAULT_HIDDEN, MLPClassifier
from virnucpro.training.data import FeatureRows, Split, batches
from virnucpro.training.metrics import binary_metrics

CHECKPOINT = "checkpoint.pt"
EVAL_BATCH = 8192
LOG_COLUMNS = (
    "epoch",
    "train_loss",
    "val_loss",
    "accuracy",
    "precision",
    "recall",
    "f1",
    "mcc",
    "auroc",
    "lr",
)
KILL_HOOK = "VIRNUCPRO_TEST_KILL_AFTER_EPOCH"  # tests: SIGKILL after this epoch's checkpoint
SMALL_STEP_MACS = 1 << 24  # below this many multiply-adds per batch, threads cost more than win


def cpu_threads(width: int, hyper: Hyperparameters) -> int | None:
    """1 for a small MLP (thread start-up and spinning dominate a tiny matmul, badly so on a
    busy machine); None (torch's default) otherwise. Fixed per configuration, so the choice
    never changes the numbers between two runs of the same training."""
    return 1 if width * hyper.hidden * hyper.batch_size < SMALL_STEP_MACS else None


@dataclass(frozen=True)
class Hyperparameters:
    epochs: int = 200
    patience: int = 5
    batch_size: int = 32
    lr: float = 2e-4
    momentum: float = 0.9
    step_size: int = 10
    gamma: float = 0.85
    hidden: int = DEFAULT_HIDDEN
    seed: int = 42

    def check(self) -> None:
        for name in ("epochs", "patience", "batch_size", "step_size", "hidden"):
            if getattr(self, name) < 1:
                raise VirnucproError(f"--{name.replace('_', '-')} must be at least 1")
        if self.batch_size < 2:
            raise VirnucproError("--batch-size must be at least 2 (BatchNorm needs 2 rows)")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise VirnucproError(f"--lr must be a positive number, got {self.lr}")


@dataclass
class TrainState:
    """What a finished (or resumed) run knows; everything in it goes in the checkpoint."""

    epoch: int = 0  # last completed epoch
    best_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    finished: bool = False
    log: list[dict] = field(default_factory=list)


def build_model(width: int, hyper: Hyperparameters) -> MLPClassifier:
    """The SPEC 1.4 MLP, biases from ``torch.manual_seed(seed)``, weights Xavier-uniform."""
    torch.manual_seed(hyper.seed)
    model = MLPClassifier(width, hyper.hidden)
    gen = torch.Generator().manual_seed(hyper.seed)
    with torch.no_grad():
        nn.init.xavier_uniform_(model.hidden_layer.weight, generator=gen)
        nn.init.xavier_uniform_(model.output_layer.weight, generator=gen)
    return model


def evaluate_split(
    model: MLPClassifier, rows: FeatureRows, split: Split, device: torch.device
) -> tuple[float, np.ndarray]:
    """(mean cross-entropy, P per class (n, 2)) of ``split`` in eval mode."""
    model.eval()
    probabilities = np.empty((len(split), 2), dtype=np.float32)
    total = 0.0
    with torch.inference_mode():
        for start, stop in rows.blocks(split, EVAL_BATCH):
            x = torch.from_numpy(rows.read(split, start, stop)).to(device)
            y = torch.from_numpy(split.labels[start:stop]).to(device)
            logits = model(x)
            total += float(F.cross_entropy(logits, y, reduction="sum"))
            probabilities[start:stop] = torch.softmax(logits, dim=1).cpu().numpy()
    return total / max(len(split), 1), probabilities


def epoch_metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict:
    calls = (probabilities[:, 1] > probabilities[:, 0]).astype(np.int64)
    return binary_metrics(labels, probabilities[:, 1], calls)


class Trainer:
    """Train on ``rows`` (train split), stop early on the validation split, checkpoint."""

    def __init__(
        self,
        rows: FeatureRows,
        hyper: Hyperparameters,
        folder: Path,
        key: dict,
        *,
        device: str = "cpu",
        quiet: bool = False,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.rows, self.hyper, self.key = rows, hyper, key
        self.path = Path(folder) / CHECKPOINT
        self.device = torch.device(device)
        threads = cpu_threads(rows.width, hyper)
        if threads is not None and self.device.type == "cpu":
            torch.set_num_threads(threads)
        self.quiet = quiet
        self.say = progress or (lambda line: print(line, file=sys.stderr, flush=True))
        self.model = build_model(rows.width, hyper).to(self.device)
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=hyper.lr, momentum=hyper.momentum
        )
        self.scheduler = torch.optim.lr_scheduler.StepLR(
            self.optimizer, step_size=hyper.step_size, gamma=hyper.gamma
        )
        self.state = TrainState()
        self.best_weights = copy.deepcopy(self.model.state_dict())
        self.resumed_from = 0

    def model_device(self) -> torch.device:
        return self.device

    # ------------------------------------------------------------ checkpoint

    def _save(self) -> None:
        payload = {
            "key": self.key,
            "state": asdict(self.state),
            "model": self.model.state_dict(),
            "best_weights": self.best_weights,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
        }
        with atomic_path(self.path) as tmp:
            torch.save(payload, tmp)

    def resume(self, restart: bool = False) -> bool:
        """Load the checkpoint of an earlier run of the same training; False if none."""
        if not self.path.exists():
            return False
        try:
            payload = torch.load(self.path, map_location=self.device, weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a damaged checkpoint: say so on one line
            raise VirnucproError(
                f"{self.path}: unreadable checkpoint ({' '.join(str(exc).split())[:200]}); "
                "delete it or pass --restart"
            ) from None
        if payload.get("key") != self.key:
            if restart:
                return False
            changed = sorted(
                k
                for k in set(self.key) | set(payload.get("key", {}))
                if self.key.get(k) != payload.get("key", {}).get(k)
            )
            raise VirnucproError(
                f"{self.path} belongs to a different training (changed: {', '.join(changed)}); "
                "use another -o MODEL_DIR or pass --restart"
            )
        if restart:
            return False
        self.model.load_state_dict(payload["model"])
        self.best_weights = payload["best_weights"]
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        torch.set_rng_state(payload["torch_rng"])
        self.state = TrainState(**payload["state"])
        self.resumed_from = self.state.epoch
        return True

    # ------------------------------------------------------------ loop

    def run(self) -> TrainState:
        """Train until early stopping or the last epoch; the best weights end in the model."""
        if self.state.epoch == 0:
            torch.manual_seed(self.hyper.seed)  # dropout's generator, saved from here on
        train, val = self.rows.splits["train"], self.rows.splits["validation"]
        while not self.state.finished:
            epoch = self.state.epoch + 1
            started = time.time()
            lr = self.optimizer.param_groups[0]["lr"]
            train_loss = self._train_epoch(train, epoch)
            self.scheduler.step()
            val_loss, probabilities = evaluate_split(self.model, self.rows, val, self.device)
            m = epoch_metrics(val.labels, probabilities)
            row = {
                "epoch": epoch,
                "train_loss": train_loss,
                "val_loss": val_loss,
                **{k: m[k] for k in ("accuracy", "precision", "recall", "f1", "mcc", "auroc")},
                "lr": lr,
            }
            self.state.log.append(row)
            if not math.isfinite(val_loss) or not math.isfinite(train_loss):
                raise VirnucproError(
                    f"training diverged at epoch {epoch} (train loss {train_loss}, validation "
                    f"loss {val_loss}); try a smaller --lr"
                )
            if val_loss < self.state.best_loss:
                self.state.best_loss, self.state.best_epoch = val_loss, epoch
                self.state.bad_epochs = 0
                self.best_weights = copy.deepcopy(self.model.state_dict())  # a real copy
            else:
                self.state.bad_epochs += 1
            self.state.epoch = epoch
            self.state.finished = (
                self.state.bad_epochs >= self.hyper.patience or epoch >= self.hyper.epochs
            )
            self._save()
            if not self.quiet:
                self.say(
                    f"epoch {epoch}/{self.hyper.epochs}: train loss {train_loss:.4f}, validation "
                    f"loss {val_loss:.4f}, accuracy {m['accuracy']:.4f} (best epoch "
                    f"{self.state.best_epoch}) in {time.time() - started:.1f} s"
                )
            if os.environ.get(KILL_HOOK) == str(epoch):
                os.kill(os.getpid(), signal.SIGKILL)
        self.model.load_state_dict(self.best_weights)
        self.model.eval()
        return self.state

    def _train_epoch(self, split: Split, epoch: int) -> float:
        from tqdm import tqdm

        self.model.train()
        rng = np.random.default_rng([self.hyper.seed, epoch])
        total, seen = 0.0, 0
        n_batches = math.ceil(len(split) / self.hyper.batch_size)
        windows = self.rows.shuffled_windows(split, rng)
        bar = tqdm(
            total=n_batches,
            desc=f"epoch {epoch}",
            unit="batch",
            leave=False,
            disable=self.quiet or not sys.stderr.isatty(),
            file=sys.stderr,
        )
        with bar:
            for x, y in batches(windows, self.hyper.batch_size):
                bar.update(1)
                if len(y) < 2:  # BatchNorm cannot train on one row: it waits for next epoch
                    continue
                xb = torch.from_numpy(x).to(self.device)
                yb = torch.from_numpy(y).to(self.device)
                self.optimizer.zero_grad()
                loss = F.cross_entropy(self.model(xb), yb)
                loss.backward()
                self.optimizer.step()
                total += float(loss.detach()) * len(y)
                seen += len(y)
        return total / max(seen, 1)
