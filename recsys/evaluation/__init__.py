"""Evaluation: full-ranking metrics over tensors and arrays, independent of models and data modules."""

from recsys.evaluation.metrics import (
    DEFAULT_KS,
    RankingAccumulator,
    mask_scores,
    rank_metrics,
    target_ranks,
)

__all__ = ["DEFAULT_KS", "RankingAccumulator", "mask_scores", "rank_metrics", "target_ranks"]
