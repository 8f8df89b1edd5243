"""Named preprocessing presets, and how a DataConfig's explicit values override them.

| preset   | min_rating | min_user_interactions | min_item_interactions | core   | ML-1M result                  |
|----------|------------|-----------------------|-----------------------|--------|-------------------------------|
| raw      | none       | 5                     | 0                     | single | 6,040 users, 3,706 items, 1,000,209 |
| papers   | none       | 5                     | 5                     | single | 6,040 users, 3,416 items, 999,611   |

'raw' keeps every interaction of every user with at least 5 (MovieLens users all have 20 or more; a custom
log loses its users with 1-4), as the README says. 'papers' is the SASRec/BERT4Rec protocol: every rating is an implicit interaction, items with fewer than
5 ratings are dropped once, then users with fewer than 5.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from recsys.config import DataConfig
from recsys.errors import DataError


@dataclass(frozen=True)
class Preprocessing:
    """The resolved filtering settings: a preset with the config's explicit values applied."""

    min_rating: float | None
    """Keep interactions rated at least this (None: all)."""
    min_user_interactions: int
    """Drop users with fewer interactions."""
    min_item_interactions: int
    """Drop items with fewer interactions."""
    core: Literal["single", "iterated"]
    """'single': items then users once; 'iterated': until a stable k-core."""
    max_history: int | None
    """Keep each user's most recent N interactions (None: all)."""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PRESETS: dict[str, Preprocessing] = {
    "raw": Preprocessing(None, min_user_interactions=5, min_item_interactions=0, core="single", max_history=None),
    "papers": Preprocessing(None, min_user_interactions=5, min_item_interactions=5, core="single", max_history=None),
}


def resolve_preprocessing(cfg: DataConfig) -> Preprocessing:
    """The preset named by `cfg.preset`, with every field the config sets (not None) taking precedence.

    `core` has a non-None default in DataConfig, so it always comes from the config.
    """
    if cfg.preset not in PRESETS:
        raise DataError(f"preset {cfg.preset!r} is unknown (known: {', '.join(PRESETS)})")
    base = PRESETS[cfg.preset]
    resolved = Preprocessing(
        min_rating=cfg.min_rating if cfg.min_rating is not None else base.min_rating,
        min_user_interactions=_pick(cfg.min_user_interactions, base.min_user_interactions),
        min_item_interactions=_pick(cfg.min_item_interactions, base.min_item_interactions),
        core=cfg.core,
        max_history=cfg.max_history if cfg.max_history is not None else base.max_history,
    )
    for name in ("min_user_interactions", "min_item_interactions"):
        if getattr(resolved, name) < 0:
            raise DataError(f"{name}={getattr(resolved, name)}: must be 0 or more")
    return resolved


def _pick(explicit: int | None, default: int) -> int:
    return default if explicit is None else explicit
