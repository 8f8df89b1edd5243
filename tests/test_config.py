"""recsys.config: the Lightning names it spells out stay Lightning's; ranges hold in Python as in YAML."""

from __future__ import annotations

import typing

import pytest

from recsys.config import ACCELERATORS, PRECISIONS, STRATEGIES, TrainerConfig
from recsys.errors import ConfigError


def test_lightning_names_are_lightnings() -> None:
    from lightning.fabric.connector import _PRECISION_INPUT_STR
    from lightning.pytorch.accelerators import AcceleratorRegistry
    from lightning.pytorch.strategies import StrategyRegistry

    assert set(ACCELERATORS) - {"auto", "gpu"} <= set(AcceleratorRegistry.available_accelerators())
    assert set(STRATEGIES) - {"auto"} <= set(StrategyRegistry.available_strategies())
    legacy = {"32", "16", "bf16", "64"}  # still accepted by Lightning 2, mapped to the -true/-mixed names
    assert set(PRECISIONS) - {"auto"} - legacy == set(typing.get_args(_PRECISION_INPUT_STR)) - {
        "transformer-engine", "transformer-engine-float16"}


def test_a_trainer_config_built_in_python_is_checked_too() -> None:
    with pytest.raises(ConfigError, match=r"^batch_size: must be at least 1, got 0$"):
        TrainerConfig(batch_size=0)
    with pytest.raises(ConfigError, match=r"^accelerator: 'tpuu' is not one of"):
        TrainerConfig(accelerator="tpuu")
    assert TrainerConfig(limit_train_batches=0.25, devices="auto").limit_train_batches == 0.25
