"""Plots people would rather look at than read: learning curves and metrics against K."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def plot_learning_curves(history: list[dict[str, float]], path: str | Path, title: str = "") -> Path:
    """Train loss and validation NDCG@10 / HR@10 per epoch, side by side, as a PNG."""
    fig = learning_curves_figure(history, title)
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


def learning_curves_figure(history: list[dict[str, float]], title: str = "") -> Any:
    """The figure of `plot_learning_curves`. The learning rate rides on the loss panel's right-hand axis when it
    changes during the run (warm-up, decay, a cool-down), since a bend in the curves often starts there; the best
    validation epoch, the one the run keeps, is marked."""
    # A bare Figure (no pyplot) draws with Agg and leaves the caller's backend alone: train() called from a
    # notebook must not switch its inline plots off.
    from matplotlib.figure import Figure

    epochs = [row["epoch"] + 1 for row in history]
    fig = Figure(figsize=(10, 3.8))
    left, right = fig.subplots(1, 2)
    left.plot(epochs, [row.get("train_loss", float("nan")) for row in history], marker=".")
    left.set(xlabel="epoch", ylabel="train loss", title="training loss")
    rates = [row.get("lr", float("nan")) for row in history]
    if len({rate for rate in rates if not math.isnan(rate)}) > 1:
        rate_axis = left.twinx()
        rate_axis.plot(epochs, rates, color="grey", linestyle=":", label="learning rate")
        rate_axis.set(ylabel="learning rate", ylim=(0, None))
        rate_axis.legend(loc="center right")
    for key in ("val_ndcg@10", "val_hr@10"):
        right.plot(epochs, [row.get(key, float("nan")) for row in history], marker=".", label=key[4:])
    scored = [row for row in history if "val_ndcg@10" in row]
    if scored:
        best = max(scored, key=lambda row: row["val_ndcg@10"])
        right.axvline(best["epoch"] + 1, color="grey", linestyle="--", linewidth=1,
                      label=f"best epoch ({int(best['epoch']) + 1})")
    right.set(xlabel="epoch", ylabel="metric", title="validation (full ranking)")
    right.legend()
    for ax in (left, right):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_metrics_at_k(metrics: dict[str, float], path: str | Path, title: str = "") -> Path:
    """HR@K, NDCG@K and MRR@K against K from a flat metric dict such as {"test_ndcg@10": 0.1, ...}."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 3.8))
    ax = fig.subplots()
    for name in ("hr", "ndcg", "mrr"):
        points = sorted(
            (int(key.rsplit("@", 1)[1]), value)
            for key, value in metrics.items()
            if "@" in key and key.rsplit("@", 1)[0].endswith(name)
        )
        if points:
            ax.plot([k for k, _ in points], [v for _, v in points], marker="o", label=f"{name.upper()}@K")
    ax.set(xscale="log", xlabel="K", ylabel="metric", title=title or "metrics at K")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path
