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


def test_every_error_is_one_line_naming_the_key_never_pydantics_dump() -> None:
    from recsys.config import DataConfig, from_dict

    cases = {
        "hiden": ("trainer", 1, r"^f\.yaml: trainer\.hiden: unknown key \(known: accelerator, batch_size, betas, "),
        "betas": ("trainer", [0.9, 0.9, 0.9], r"^f\.yaml: trainer\.betas: expected a list of 2 values, got 3$"),
        "progress_bar": ("trainer", "yes", r"^f\.yaml: trainer\.progress_bar: expected true or false, got 'yes'$"),
        "text_columns": ("data", [1], r"^f\.yaml: data\.text_columns\[0\]: expected a string, got 1$"),
        "max_history": ("data", "5", r"^f\.yaml: data\.max_history: expected an integer, got '5'$"),
    }
    for key, (section, value, message) in cases.items():
        cls = TrainerConfig if section == "trainer" else DataConfig
        with pytest.raises(ConfigError, match=message) as caught:
            from_dict(cls, {key: value}, f"f.yaml: {section}")
        assert "\n" not in str(caught.value) and "pydantic" not in str(caught.value)


def test_shorthand_dict_and_flat_loss_keys_are_one_loss_config(tmp_path) -> None:
    from recsys.models.losses import LossConfig
    from recsys.run_config import load_run_config, run_config_from_dict

    def loss_of(text: str, *overrides: str) -> LossConfig:
        path = tmp_path / "run.yaml"
        path.write_text(text)
        return load_run_config(path, list(overrides)).model.loss

    assert loss_of("model:\n  loss: bce\n") == LossConfig(name="bce")
    assert loss_of("model:\n  loss: {name: sampled_ce, n_negatives: 512}\n") == LossConfig(name="sampled_ce",
                                                                                          n_negatives=512)
    # overrides: the name alone keeps a mapping's options; an option turns a name alone into a mapping
    assert loss_of("model:\n  loss: {name: sampled_ce, n_negatives: 512}\n", "model.loss=gbce") == LossConfig(
        name="gbce", n_negatives=512)
    assert loss_of("model:\n  loss: ce\n", "model.loss.n_negatives=64", "model.loss=sampled_ce") == LossConfig(
        name="sampled_ce", n_negatives=64)
    # recsys 0.1's layout: the options flat in the model section, in a file or an override
    assert loss_of("model:\n  loss: gbce\n  n_negatives: 7\n  gbce_t: 0.5\n") == LossConfig(
        name="gbce", n_negatives=7, gbce_t=0.5)
    assert loss_of("model:\n  name: bert4rec\n  loss: sampled_ce\n  n_negatives: 9\n").n_negatives == 9
    assert loss_of("model:\n  loss: gbce\n", "model.gbce_t=0.25") == LossConfig(name="gbce", gbce_t=0.25)
    with pytest.raises(ConfigError, match=r"run\.yaml: model\.n_negatives: given twice, also as "
                                          r"model\.loss\.n_negatives"):
        loss_of("model:\n  loss: {name: gbce, n_negatives: 3}\n  n_negatives: 4\n")
    # the popularity baseline has no loss: its flat keys stay unknown keys, not loss options
    with pytest.raises(ConfigError, match=r"model\.n_negatives: unknown key \(known: max_len\)"):
        loss_of("model:\n  name: popularity\n  n_negatives: 4\n")
    # written back, the loss is one mapping, and it reads back the same
    cfg = run_config_from_dict({"model": {"loss": "gbce", "n_negatives": 7}})
    assert cfg.to_dict()["model"]["loss"] == {"name": "gbce", "n_negatives": 7, "gbce_t": 0.75,
                                              "history_negatives": True, "negatives": "uniform", "logq_correction": True,
                                              "chunk_mb": 1024}
    assert "n_negatives" not in cfg.to_dict()["model"]
    assert run_config_from_dict(cfg.to_dict()) == cfg


def test_a_saved_model_of_recsys_0_1_still_loads_and_recommends_the_same(tmp_path) -> None:
    import shutil
    from pathlib import Path

    from recsys.models.losses import LossConfig
    from recsys.retrieval.recommender import Recommender

    fixture = Path(__file__).parent / "fixtures" / "model-0.1"
    assert "n_negatives: 7" in (fixture / "config.yaml").read_text()  # the old, flat layout
    model_dir = shutil.copytree(fixture, tmp_path / "model")  # loading writes the FAISS index beside it
    rec = Recommender.load(model_dir)
    # what recsys 0.1 recommended from this directory (tests/fixtures/README.md), scores to 1e-6: the same
    # weights, so only float rounding in a different build of the same kernels could move them
    expected = {11: [(190, 0.269193), (250, 0.172925), (130, 0.144069), (360, 0.139116), (320, 0.116808)],
                14: [(350, 0.117610), (390, 0.088951), (320, 0.026266), (270, 0.025939), (220, 0.024832)]}
    for user, items in expected.items():
        got = rec.recommend(user=user, k=5)
        assert [r.item_id for r in got] == [item for item, _ in items]
        assert [r.score for r in got] == pytest.approx([score for _, score in items], abs=1e-6)
    from recsys.saved_model import build_saved_model, load_model_files

    cfg, _ = build_saved_model(load_model_files(model_dir), model_dir)
    assert cfg.model.loss == LossConfig(name="gbce", n_negatives=7, gbce_t=0.5)
    assert cfg.trainer.train_windows == "all"



def test_training_windows_refuses_what_is_not_last_or_all() -> None:
    import polars as pl

    from recsys.data.batches import training_windows

    train = pl.DataFrame({"items": [[1, 2, 3]]})
    assert training_windows(train, 2, "all").shape == (1, 3)
    with pytest.raises(ValueError, match="train_windows must be one of 'last', 'all', got 'every'"):
        training_windows(train, 2, "every")  # type: ignore[arg-type]  # once silently "all"
