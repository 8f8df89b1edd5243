"""Learning-rate warm-up and decay, as factors of the peak learning rate per optimiser step."""

from __future__ import annotations

import math

import pytest

from recsys.training.module import _lr_lambda


def test_linear_warmup_then_constant() -> None:
    factor = _lr_lambda(warmup=4, total=100, decay="none")
    assert [factor(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_linear_decay_reaches_zero_at_the_last_step() -> None:
    factor = _lr_lambda(warmup=0, total=10, decay="linear")
    assert factor(0) == 1.0
    assert factor(5) == pytest.approx(0.5)
    assert factor(10) == 0.0


def test_cosine_decay_after_warmup() -> None:
    factor = _lr_lambda(warmup=2, total=12, decay="cosine")
    assert factor(1) == 1.0  # end of warm-up
    assert factor(7) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert factor(12) == pytest.approx(0.0, abs=1e-12)
