"""Classification metrics (scikit-learn) and their plots (matplotlib) for train and evaluate.

Class 1 is virus. A row is called virus when P(virus) > P(others), as ``predict`` calls a
frame. Metrics that are undefined (AUROC with one class present) are ``None``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from virnucpro.errors import VirnucproError
from virnucpro.io.atomic import atomic_path

MISSING = (
    "scikit-learn is needed for training and evaluation metrics: "
    "pip install 'virnucpro[train]' (or pip install scikit-learn)"
)


def _sklearn():
    try:
        from sklearn import metrics
    except ImportError:
        raise VirnucproError(MISSING) from None
    return metrics


def _number(value) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def binary_metrics(labels: np.ndarray, score: np.ndarray, calls: np.ndarray) -> dict:
    """accuracy, precision, recall, f1, mcc, auroc, auprc, confusion matrix and counts.

    ``labels`` and ``calls`` are 0/1 (1 = virus), ``score`` is P(virus) (or a record score).
    """
    m = _sklearn()
    labels = np.asarray(labels, dtype=np.int64)
    calls = np.asarray(calls, dtype=np.int64)
    score = np.asarray(score, dtype=np.float64)
    both = len(np.unique(labels)) == 2
    tn, fp, fn, tp = m.confusion_matrix(labels, calls, labels=[0, 1]).ravel().tolist()
    return {
        "accuracy": _number(m.accuracy_score(labels, calls)) if len(labels) else None,
        "precision": _number(m.precision_score(labels, calls, zero_division=0)),
        "recall": _number(m.recall_score(labels, calls, zero_division=0)),
        "f1": _number(m.f1_score(labels, calls, zero_division=0)),
        "mcc": _number(m.matthews_corrcoef(labels, calls)) if len(labels) else None,
        "auroc": _number(m.roc_auc_score(labels, score)) if both else None,
        "auprc": _number(m.average_precision_score(labels, score)) if both else None,
        "confusion_matrix": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
        "counts": {
            "total": int(len(labels)),
            "virus": int(labels.sum()),
            "others": int(len(labels) - labels.sum()),
        },
    }


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight")


def plot_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], folder: Path) -> None:
    """``folder/roc.png`` and ``folder/pr.png``, one line per named (labels, score) pair."""
    m, plt = _sklearn(), _pyplot()
    for kind in ("roc", "pr"):
        fig, ax = plt.subplots(figsize=(5, 4.5))
        for name, (labels, score) in curves.items():
            if len(np.unique(labels)) < 2:
                continue
            if kind == "roc":
                x, y, _ = m.roc_curve(labels, score)
                area = m.roc_auc_score(labels, score)
            else:
                y, x, _ = m.precision_recall_curve(labels, score)
                area = m.average_precision_score(labels, score)
            ax.plot(x, y, label=f"{name} ({'AUROC' if kind == 'roc' else 'AP'} {area:.3f})")
        if kind == "roc":
            ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
            ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
        else:
            ax.set(xlabel="recall", ylabel="precision", title="precision-recall")
        ax.set(xlim=(0, 1), ylim=(0, 1.02))
        ax.legend(loc="lower right" if kind == "roc" else "lower left", fontsize=8)
        _save(fig, folder / f"{kind}.png")
        plt.close(fig)


def plot_loss(log: list[dict], best_epoch: int, path: Path) -> None:
    """Training and validation loss per epoch, the saved (best) epoch marked."""
    plt = _pyplot()
    epochs = [r["epoch"] for r in log]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [r["train_loss"] for r in log], label="train")
    ax.plot(epochs, [r["val_loss"] for r in log], label="validation")
    ax.axvline(best_epoch, color="grey", linestyle=":", label=f"saved (epoch {best_epoch})")
    ax.set(xlabel="epoch", ylabel="cross-entropy loss", title="training")
    ax.legend()
    _save(fig, path)
    plt.close(fig)
