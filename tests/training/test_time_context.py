"""`evaluation.time_context`: a time-aware model (HSTU) is validated and tested at the last interaction ('none',
the default) or at the target's timestamp ('target'); the test is always scored both ways and every place a
result shows says which it is. Real data (the embedded ml-latest-small), a real MLflow store, real saved models."""

from __future__ import annotations

import shutil
from pathlib import Path

from typing import Any

import lightning as L
import pytest
import torch
from mlflow.tracking import MlflowClient
from torch.utils.data import DataLoader

from recsys.cli import main
from recsys.data.batches import EvaluationRows, pass_through
from recsys.data.prepare import prepare_dataset
from recsys.data.splits import make_split
from recsys.errors import ConfigError
from recsys.evaluation.metrics import DEFAULT_KS, RankingAccumulator
from recsys.evaluation.runner import evaluate_loader, evaluate_saved_model, query_time
from recsys.models import MODELS
from recsys.run_config import load_run_config
from recsys.saved_model import build_saved_model, load_model_files
from recsys.training.datamodule import SequenceDataModule
from recsys.training.module import RecommenderModule
from recsys.training.train import TrainResult, train

# Metrics are recomputed from the same weights and data by the same code, in float32 scores: only the order
# of float operations may differ between the scoring in training and the one from the saved model.
TOL = 1e-6
FIXTURES = Path(__file__).parents[1] / "fixtures"
QUICK_HSTU = ["data.name=ml-latest-small", "data.max_history=30", "model.name=hstu", "model.max_len=30",
              "model.hidden=32", "model.attention_dim=16", "model.linear_dim=16", "trainer.max_epochs=4", "trainer.lr=0.003",
              "trainer.batch_size=64", "trainer.progress_bar=false", "trainer.threads=1"]


def quick_hstu(tmp_path: Path, *overrides: str) -> TrainResult:
    cfg = load_run_config(None, [*QUICK_HSTU, *overrides, f"tracking.output_dir={tmp_path / 'runs'}",
                                 f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"])
    return train(cfg)


@pytest.fixture(scope="module")
def target_run(tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    return quick_hstu(tmp_path_factory.mktemp("target"), "evaluation.time_context=target")


def test_the_default_is_no_time_context() -> None:
    assert load_run_config(None, ["model.name=hstu"]).evaluation.time_context == "none"
    assert load_run_config(None).to_dict()["evaluation"]["time_context"] == "none"


def test_a_model_that_reads_no_timestamps_refuses_a_time_context() -> None:
    readers = ", ".join(name for name, (cls, _) in sorted(MODELS.items()) if cls.uses_timestamps)
    assert "hstu" in readers.split(", ") and "sasrec" not in readers.split(", ")
    with pytest.raises(ConfigError, match=rf"^config: evaluation.time_context: target needs a model that reads "
                                          rf"timestamps \({readers}\); sasrec does not$"):
        load_run_config(None, ["evaluation.time_context=target"])
    with pytest.raises(ConfigError, match=r"evaluation.time_context"):
        load_run_config(None, ["model.name=hstu", "evaluation.time_context=tomorrow"])


def test_query_time_is_the_targets_timestamp_only_under_target() -> None:
    batch = {"history": torch.ones(2, 3, dtype=torch.long), "target_time": torch.tensor([5, 7])}
    assert query_time(batch, "none") is None
    assert query_time(batch, "target").tolist() == [5, 7]
    with pytest.raises(ValueError, match="target_time"):
        query_time({"history": batch["history"]}, "target")


def test_the_test_is_scored_both_ways_and_the_headline_is_the_configured_one(target_run: TrainResult) -> None:
    m = target_run.metrics
    for key in ("ndcg@10", "hr@10", "mrr@10", "coverage@10"):
        assert m[f"test_{key}"] == m[f"test_time_target_{key}"]
        assert f"test_time_none_{key}" in m


def loud_time_model(model_dir: Path) -> Any:
    """The trained HSTU of `model_dir` with its time-gap biases made large: after a few epochs on
    ml-latest-small they are still near their small initial values and change few top-10 hits, which would
    let a wiring mistake between the two contexts pass unseen."""
    _, model = build_saved_model(load_model_files(model_dir), model_dir)
    torch.manual_seed(0)
    with torch.no_grad():
        for block in model.blocks:
            block.time_weight.normal_(0, 3.0)
    return model.eval()


def test_each_context_asks_at_its_time(target_run: TrainResult) -> None:
    cfg = load_run_config(None, QUICK_HSTU)
    test = make_split(prepare_dataset(cfg.data), cfg.data).test
    model = loud_time_model(target_run.model_dir)
    rows = EvaluationRows(test, model.max_len, with_timestamps=True)
    loader = DataLoader(rows, batch_size=128, collate_fn=pass_through)
    by_context = {c: evaluate_loader(model, loader, model.n_items, time_context=c) for c in ("none", "target")}
    assert by_context["none"]["ndcg@10"] != pytest.approx(by_context["target"]["ndcg@10"], abs=TOL)
    # 'target' is the model asked at each target's timestamp, 'none' the model asked with no time at all.
    for context, at_of in (("none", lambda batch: None), ("target", lambda batch: batch["target_time"])):
        accumulator = RankingAccumulator(model.n_items, DEFAULT_KS)
        with torch.no_grad():
            for batch in loader:
                accumulator.update(model.score(batch["history"], batch["history_times"], at_of(batch)).float(),
                                   batch["target"], batch["seen"])
        assert accumulator.compute()["ndcg@10"] == pytest.approx(by_context[context]["ndcg@10"], abs=TOL)


def test_saved_model_evaluation_reproduces_both_contexts(target_run: TrainResult) -> None:
    m = target_run.metrics
    assert evaluate_saved_model(target_run.model_dir)["time_context"] == "target"  # the model's own setting
    for context in ("none", "target"):
        again = evaluate_saved_model(target_run.model_dir, time_context=context)
        assert again["time_context"] == context
        assert again["ndcg@10"] == pytest.approx(m[f"test_time_{context}_ndcg@10"], abs=TOL)
        assert again["hr@10"] == pytest.approx(m[f"test_time_{context}_hr@10"], abs=TOL)


def test_the_mlflow_run_says_how_it_was_asked(target_run: TrainResult) -> None:
    run = MlflowClient(tracking_uri=target_run.tracking_uri).get_run(target_run.run_id)
    assert run.data.params["evaluation.time_context"] == "target"
    assert "asked at the target's timestamp (evaluation.time_context: target)" in run.data.tags["mlflow.note.content"]
    assert run.data.metrics["test_time_none_ndcg_at_10"] == pytest.approx(target_run.metrics["test_time_none_ndcg@10"])


def test_validation_selects_under_the_configured_context(target_run: TrainResult) -> None:
    """Validation during training (what early stopping and the best checkpoint follow) asks the model at
    the configured time: Lightning's validation loop over the run's own data module gives the saved
    evaluator's valid metrics of that context."""
    cfg = load_run_config(None, QUICK_HSTU)
    split = make_split(prepare_dataset(cfg.data), cfg.data)
    model = loud_time_model(target_run.model_dir)
    datamodule = SequenceDataModule(split, max_len=model.max_len, objective="shift", batch_size=64,
                                    eval_batch_size=128, windows="last", bucket_by_length=True, mask_token=0,
                                    mask_prob=0.0, last_item_mask_prob=0.0, num_workers=0, seed=0,
                                    with_timestamps=True)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    rows = EvaluationRows(split.valid, model.max_len, with_timestamps=True)
    loader = DataLoader(rows, batch_size=128, collate_fn=pass_through)
    for context in ("none", "target"):
        module = RecommenderModule(model, model.n_items, loss=None, trainer_config=cfg.trainer, time_context=context)
        validated = trainer.validate(module, datamodule=datamodule, verbose=False)[0]["val_ndcg@10"]
        expected = evaluate_loader(model, loader, model.n_items, time_context=context)["ndcg@10"]
        assert validated == pytest.approx(expected, abs=TOL)
    assert evaluate_loader(model, loader, model.n_items, time_context="none")["ndcg@10"] != pytest.approx(
        expected, abs=TOL)


def test_evaluate_command_names_the_context(target_run: TrainResult, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--model", str(target_run.model_dir), "--time-context", "none"]) == 0
    assert "asked at the last interaction (time context: none)" in capsys.readouterr().out


def test_a_model_without_timestamps_cannot_be_evaluated_with_a_time_context(tmp_path: Path) -> None:
    model_dir = shutil.copytree(FIXTURES / "model-0.1", tmp_path / "model")  # a SASRec saved by recsys 0.1
    with pytest.raises(ConfigError, match=r"--time-context target: sasrec reads no timestamps$"):
        evaluate_saved_model(model_dir, time_context="target")
