"""Plots people would rather look at than read: learning curves and metrics against K."""

from __future__ import annotations

from pathlib import Path


def plot_learning_curves(history: list[dict[str, float]], path: str | Path, title: str = "") -> Path:
    """Train loss and validation NDCG@10 / HR@10 per epoch, side by side, as a PNG."""
    # A bare Figure (no pyplot) draws with Agg and leaves the caller's backend alone: train() called from a
    # notebook must not switch its inline plots off.
    from matplotlib.figure import Figure

    epochs = [row["epoch"] + 1 for row in history]
    fig = Figure(figsize=(10, 3.8))
    left, right = fig.subplots(1, 2)
    left.plot(epochs, [row.get("train_loss", float("nan")) for row in history], marker=".")
    left.set(xlabel="epoch", ylabel="train loss", title="training loss")
    for key in ("val_ndcg@10", "val_hr@10"):
        right.plot(epochs, [row.get(key, float("nan")) for row in history], marker=".", label=key[4:])
    right.set(xlabel="epoch", ylabel="metric", title="validation (full ranking)")
    right.legend()
    for ax in (left, right):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


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
