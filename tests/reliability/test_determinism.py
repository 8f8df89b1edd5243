"""Same seed, same data, same config on CPU: the same metrics to the last digit, for every trained model
(SASRec: tests/training/test_train.py::test_same_seed_reproduces_metrics_exactly)."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys.training.train import train
from tests.reliability.conftest import CONFIGS, quick


@pytest.mark.parametrize("config", ["bert4rec_ml-latest-small.yaml", "gru4rec_ml-latest-small.yaml"])
def test_same_seed_reproduces_metrics_exactly(tmp_path: Path, config: str) -> None:
    cfg = quick(tmp_path, "trainer.max_epochs=1", "trainer.limit_train_batches=2", "tracking.enabled=false",
                config=CONFIGS / config)
    first, second = train(cfg), train(cfg)

    def quality(metrics: dict[str, float]) -> dict[str, float]:
        return {k: v for k, v in metrics.items() if not k.endswith("_s")}  # drop timings

    assert quality(first.metrics) == quality(second.metrics)  # ==, not approx
    assert len(quality(first.metrics)) > 40
    assert first.metrics["valid_ndcg@50"] > 0  # a real ranking, not all zeros
