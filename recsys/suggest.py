"""A run config for a dataset chosen from its statistics: `recsys config suggest NAME [--from LOG]`.

The shipped configs were tuned for their datasets; a user's own log has none. These rules pick the settings
that depend on the data, each with the statistic it read and why (README, "A config for your own log"):

- **Repeats.** If at least REPEAT_SHARE of the test targets (each user's last item) occur earlier in the same
  user's history, the history stays rankable (`evaluation.exclude_seen: false`): excluding it would make those
  targets impossible to hit (Instacart sample 52%, Ta-Feng 19%, MovieLens 0%). The training softmax then keeps
  the history too; without repeats it leaves each position's earlier items out
  (`trainer.exclude_history_from_loss`, ml-100k: validation NDCG@10 0.1203 against 0.1138, test 0.1062 against
  0.0902 over three seeds).
- **History length.** `model.max_len` is the 90th percentile of the users' history lengths rounded up to a
  multiple of 10, between MIN_LEN and MAX_LEN (the ML-1M papers' 200): most users are read whole, and the few
  longest do not set the cost of every batch.
- **Catalogue size.** Full softmax cross-entropy (`loss: ce`, exact, memory-bounded) up to FULL_CE_MAX_ITEMS
  items; beyond, sampled softmax over SAMPLED_NEGATIVES popularity-drawn negatives with logQ correction, whose
  step cost does not grow with the catalogue (benchmarks/large_catalogue.py).

Everything else is the setting that beat RecTools' default on ml-100k and the published ML-1M figures:
SASRec, 2 blocks, hidden 64, 1 head, dropout 0.2, Adam lr 1e-3, batch 128, early stopping on validation NDCG@10
with patience 10, at most 200 epochs, leave-one-out.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

REPEAT_SHARE = 0.05
MIN_LEN, MAX_LEN = 20, 200
FULL_CE_MAX_ITEMS = 200_000
SAMPLED_NEGATIVES = 1024


@dataclasses.dataclass(frozen=True)
class Choice:
    """One config value the rules chose, and why (written beside it in the YAML)."""

    key: str
    """section.key, e.g. model.max_len."""
    value: Any
    why: str


def history_repeat_share(sequences: Any) -> float:
    """Share of the users (with 3 or more items, those leave-one-out evaluates) whose last item occurs earlier
    in their own history. `sequences`: the prepared dataset's per-user item lists (a polars Series)."""
    import polars as pl

    frame = pl.DataFrame({"items": sequences}).filter(pl.col("items").list.len() >= 3)
    if frame.height == 0:
        return 0.0
    earlier = pl.col("items").list.slice(0, pl.col("items").list.len() - 1)
    return float(frame.select(earlier.list.contains(pl.col("items").list.last()).mean()).item())


def choices(stats: dict[str, Any], repeat_share: float) -> list[Choice]:
    """The data-dependent values, from `recsys.data.prepare.dataset_stats` and `history_repeat_share`."""
    repeats = repeat_share >= REPEAT_SHARE
    share = f"{repeat_share:.0%} of the test targets occur earlier in the user's history"
    p90 = float(stats["sequence_length"]["p90"])
    max_len = int(min(MAX_LEN, max(MIN_LEN, math.ceil(p90 / 10) * 10)))
    items = int(stats["items"])
    out = [
        Choice("evaluation.exclude_seen", not repeats,
               f"{share}: " + ("keep the history rankable" if repeats else
                               f"under {REPEAT_SHARE:.0%}, so leave it out of the ranking")),
        Choice("trainer.exclude_history_from_loss", not repeats,
               "repeats are targets: keep them in the training softmax" if repeats else
               "as evaluation leaves the history out, so does the training softmax"),
        Choice("model.max_len", max_len, f"90th percentile of history length {p90:,.0f}, rounded up to tens, "
                                         f"within [{MIN_LEN}, {MAX_LEN}]"),
    ]
    if items <= FULL_CE_MAX_ITEMS:
        out.append(Choice("model.loss", "ce", f"{items:,} items: full softmax (up to {FULL_CE_MAX_ITEMS:,})"))
    else:
        out.append(Choice("model.loss", {"name": "sampled_ce", "n_negatives": SAMPLED_NEGATIVES,
                                         "negatives": "popularity"},
                          f"{items:,} items, over {FULL_CE_MAX_ITEMS:,}: sampled softmax, popularity negatives, logQ"))
    return out


FIXED: dict[str, Any] = {  # section.key -> value: what the rules do not change
    "model.hidden": 64, "model.n_layers": 2, "model.n_heads": 1, "model.dropout": 0.2,
    "trainer.max_epochs": 200, "trainer.batch_size": 128, "trainer.lr": 0.001, "trainer.patience": 10,
    "trainer.seed": 42,
}


def config_yaml(data: dict[str, Any], model_name: str, model_fields: set[str], stats: dict[str, Any],
                repeat_share: float, command: str) -> str:
    """The run config as YAML text: `data` as given, the chosen values with their reasons as comments, the
    fixed ones; model keys the model does not have are left out."""
    import yaml

    chosen = {c.key: c for c in choices(stats, repeat_share)}
    values: dict[str, dict[str, Any]] = {"data": dict(data), "model": {"name": model_name}, "trainer": {},
                                         "evaluation": {}}
    for key, value in [*FIXED.items(), *((k, c.value) for k, c in chosen.items())]:
        section, name = key.split(".", 1)
        if section == "model" and name not in model_fields:
            continue
        values[section][name] = value
    lengths = stats["sequence_length"]
    lines = [
        f"# Written by: {command}",
        "# Values marked with a reason were chosen from the data's statistics (rules: recsys/suggest.py; README,",
        "# \"A config for your own log\"). Edit anything, then: recsys train --config THIS_FILE",
        f"# {stats['users']:,} users, {stats['items']:,} items, {stats['interactions']:,} interactions; history "
        f"length p50 {lengths['p50']:,.0f}, p90 {lengths['p90']:,.0f}, max {lengths['max']:,};",
        f"# {repeat_share:.1%} of the test targets occur earlier in the user's history.",
    ]
    for section in ("data", "model", "trainer", "evaluation"):
        lines.append(f"{section}:")
        for name, value in values[section].items():
            text = yaml.safe_dump({name: value}, default_flow_style=True, sort_keys=False, width=1000).strip()
            text = text[1:-1] if text.startswith("{") else text  # {key: value} -> key: value
            why = chosen.get(f"{section}.{name}")
            lines.append(f"  {text}" + (f"  # {why.why}" if why else ""))
    return "\n".join(lines) + "\n"
