"""Training end to end on real data (the embedded ml-latest-small, cut short) with a real MLflow store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from recsys.data.prepare import prepare_dataset
from recsys.saved_model import load_model_files
from recsys.run_config import load_run_config
from recsys.training.resume import resume_config
from recsys.training.train import train

# Small enough for seconds per epoch on 2 cores, real enough to learn something: the last 30 items of
# every ml-latest-small user, a 2-layer SASRec of width 32.
QUICK = [
    "data.max_history=30",
    "model.max_len=30",
    "model.hidden=32",
    "trainer.progress_bar=false",
    "trainer.threads=2",
]


def quick_config(tmp_path: Path, *extra: str):
    overrides = [*QUICK, f"tracking.output_dir={tmp_path / 'runs'}",
                 f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}", *extra]
    return load_run_config(Path(__file__).parents[1] / "configs" / "sasrec_small.yaml", overrides)


@pytest.fixture(scope="module")
def two_epoch_run(tmp_path_factory: pytest.TempPathFactory):
    tmp_path = tmp_path_factory.mktemp("run")
    cfg = quick_config(tmp_path, "trainer.max_epochs=2", "tracking.register_as=quick-sasrec")
    return tmp_path, cfg, train(cfg)


def test_run_is_logged_to_a_real_mlflow_store(two_epoch_run) -> None:
    tmp_path, cfg, result = two_epoch_run
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["model.hidden"] == "32"
    assert params["data.name"] == "ml-latest-small"
    assert params["model.loss.name"] == "ce" and params["model.loss.n_negatives"] == "256"  # the loss sub-config
    assert run.data.tags["loss"] == "ce"
    assert params["dataset.n_users"] == "610"
    assert len(params["dataset.fingerprint"]) >= 16
    assert run.data.tags["model"] == "sasrec"
    assert run.data.tags["dataset"] == "ml-latest-small"
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "recsys-ml-latest-small"

    losses = client.get_metric_history(result.run_id, "train_loss")
    assert [m.step for m in losses] == [1, 2]
    assert losses[1].value < losses[0].value  # it learns
    assert [m.step for m in client.get_metric_history(result.run_id, "val_ndcg_at_10")] == [1, 2]  # epochs from 1
    assert 0.0 <= run.data.metrics["test_ndcg_at_10"] <= run.data.metrics["test_hr_at_10"] <= 1.0
    assert run.data.metrics["test_hr_at_10"] == pytest.approx(result.metrics["test_hr@10"])

    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"config.yaml", "plots", "model"} <= artifacts
    plots = {a.path for a in client.list_artifacts(result.run_id, "plots")}
    assert {"plots/learning_curves.png", "plots/test_metrics_at_k.png"} <= plots
    model_files = {a.path for a in client.list_artifacts(result.run_id, "model")}
    assert "model/weights.safetensors" in model_files and "model/manifest.json" in model_files

    versions = client.search_model_versions("name='quick-sasrec'")
    assert [v.run_id for v in versions] == [result.run_id]
    assert float(versions[0].tags["test_ndcg_at_10"]) == pytest.approx(result.metrics["test_ndcg@10"], rel=1e-5)
    assert versions[0].description.startswith("sasrec on ml-latest-small (preset raw), leave_one_out split")
    assert f"test NDCG@10 {result.metrics['test_ndcg@10']:.4f}" in versions[0].description


def test_saved_model_holds_everything_needed_to_recommend(two_epoch_run) -> None:
    _, cfg, result = two_epoch_run
    saved = load_model_files(result.model_dir)
    assert saved.model_name == "sasrec"
    dataset = prepare_dataset(cfg.data)
    assert saved.n_items == saved.item_map.height == dataset.n_items
    assert dataset.n_items < 9724  # max_history=30 leaves part of the catalogue
    assert saved.user_map.height == saved.histories.height == 610
    assert saved.items.height == dataset.n_items and "title" in saved.items.columns
    assert saved.state_dict["item_emb.weight"].shape == (dataset.n_items + 1, 32)
    assert saved.histories["items"].to_list() == dataset.sequences["items"].to_list()
    assert saved.config["model"]["hidden"] == 32
    assert saved.metrics["test_ndcg@10"] == pytest.approx(result.metrics["test_ndcg@10"])
    assert saved.extra["fingerprint"]
    assert (result.run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (result.run_dir / "checkpoints" / "best.ckpt").is_file()


def test_full_ranking_metrics_are_consistent(two_epoch_run) -> None:
    _, _, result = two_epoch_run
    m = result.metrics
    assert m["test_n_users"] == 610
    for split in ("valid", "test"):
        hr = [m[f"{split}_hr@{k}"] for k in (1, 5, 10, 20, 50)]
        assert hr == sorted(hr)  # HR@K grows with K
        assert m[f"{split}_hr@1"] == pytest.approx(m[f"{split}_ndcg@1"]) == pytest.approx(m[f"{split}_mrr@1"])
        assert m[f"{split}_mrr@10"] <= m[f"{split}_ndcg@10"] <= m[f"{split}_hr@10"]


def test_runs_never_clobber_each_other(tmp_path: Path) -> None:
    cfg = quick_config(tmp_path, "trainer.max_epochs=1", "trainer.limit_train_batches=1")
    first, second = train(cfg), train(cfg)
    assert first.run_dir != second.run_dir
    assert first.model_dir.is_dir() and second.model_dir.is_dir()
    assert first.run_id != second.run_id


def test_same_seed_reproduces_metrics_exactly(tmp_path: Path) -> None:
    cfg = quick_config(tmp_path, "trainer.max_epochs=1", "tracking.enabled=false")
    first, second = train(cfg), train(cfg)
    assert first.metrics["test_ndcg@10"] == second.metrics["test_ndcg@10"]
    def quality(metrics: dict) -> dict:
        return {k: v for k, v in metrics.items() if not k.endswith("_s")}  # drop timings

    assert quality(first.metrics) == quality(second.metrics)
    assert len(quality(first.metrics)) > 40


def test_resume_continues_the_same_run_without_gaps(tmp_path: Path) -> None:
    straight = train(quick_config(tmp_path / "straight", "trainer.max_epochs=2", "tracking.enabled=false"))

    first = train(quick_config(tmp_path, "trainer.max_epochs=1"))
    resumed = train(resume_config(first.run_dir, ["trainer.max_epochs=2"]), resume=first.run_dir)
    assert resumed.run_id == first.run_id
    assert resumed.run_dir == first.run_dir
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert [m.step for m in client.get_metric_history(first.run_id, "train_loss")] == [1, 2]
    # Each epoch's randomness depends only on (seed, epoch): resuming equals not stopping.
    assert resumed.metrics["test_ndcg@10"] == pytest.approx(straight.metrics["test_ndcg@10"], abs=1e-6)
    # The history (and so the time to the best epoch) covers the whole run, not only this process's part.
    assert [r["epoch"] for r in resumed.history] == [0, 1]
    assert resumed.history[0]["epoch_train_s"] == first.history[0]["epoch_train_s"]
    info = json.loads((first.run_dir / "run.json").read_text())
    assert info["run_id"] == first.run_id


def test_unreachable_tracking_store_does_not_stop_training(tmp_path: Path) -> None:
    # Port 9 (discard) on localhost: nothing listens, the connection is refused at once.
    cfg = quick_config(tmp_path, "trainer.max_epochs=1", "trainer.limit_train_batches=1",
                       "tracking.tracking_uri=http://127.0.0.1:9")
    with pytest.warns(RuntimeWarning, match="MLflow tracking at http://127.0.0.1:9 failed"):
        result = train(cfg)
    assert result.model_dir is not None and (result.model_dir / "manifest.json").is_file()
    assert result.run_id is None



def test_evaluate_recomputes_the_saved_test_metrics(two_epoch_run) -> None:
    from recsys.evaluation.runner import evaluate_saved_model

    _, _, result = two_epoch_run
    test = evaluate_saved_model(result.model_dir, split="test")
    assert test["ndcg@10"] == pytest.approx(result.metrics["test_ndcg@10"], abs=1e-9)
    assert test["hr@50"] == pytest.approx(result.metrics["test_hr@50"], abs=1e-9)
    valid = evaluate_saved_model(result.model_dir, split="valid")
    assert valid["ndcg@10"] == pytest.approx(result.metrics["valid_ndcg@10"], abs=1e-9)
    # Keeping seen items in the ranking can only push targets down (or leave them): never a better rank.
    unmasked = evaluate_saved_model(result.model_dir, split="test", exclude_history=False)
    assert unmasked["hr@50"] <= test["hr@50"]


def test_run_config_round_trips(tmp_path: Path) -> None:
    from recsys.run_config import run_config_from_dict

    cfg = quick_config(tmp_path, "model.loss=gbce", "trainer.betas=[0.9, 0.99]")
    assert run_config_from_dict(cfg.to_dict()) == cfg
    assert cfg.trainer.betas == (0.9, 0.99)


def test_time_budget_stops_training_and_keeps_the_best_epoch(tmp_path: Path) -> None:
    import lightning as L

    class SlowEpochs(L.Callback):
        """Makes every training step take 0.2 s so that a 0.01-minute (0.6 s) budget ends the fit early."""

        def on_train_batch_end(self, *args: object) -> None:
            import time

            time.sleep(0.2)

    cfg = quick_config(tmp_path, "trainer.max_epochs=50", "trainer.max_minutes=0.01", "tracking.enabled=false")
    result = train(cfg, callbacks=[SlowEpochs()])
    assert result.metrics["epochs_run"] < 50
    assert result.history and len(result.history) <= result.metrics["epochs_run"] + 1
    assert 0.0 <= result.metrics["test_ndcg@10"] <= 1.0
    assert result.model_dir is not None and (result.model_dir / "manifest.json").is_file()


def test_validating_every_few_epochs_early_stops_on_the_validations(tmp_path: Path) -> None:
    # lr 0: every validation scores the same, so patience 1 stops at the second validation (epoch 3).
    cfg = quick_config(tmp_path, "trainer.max_epochs=8", "trainer.val_every=2", "trainer.patience=1",
                       "trainer.lr=0", "trainer.limit_train_batches=2", "tracking.enabled=false")
    result = train(cfg)
    validated = [int(row["epoch"]) for row in result.history if "val_ndcg@10" in row]
    assert [int(row["epoch"]) for row in result.history] == [0, 1, 2, 3]
    assert validated == [1, 3]
    assert result.metrics["best_epoch"] == 2  # counted from 1


def test_last_checkpoint_follows_every_epoch_even_without_a_new_best(tmp_path: Path) -> None:
    from recsys.training.checkpoints import load_checkpoint_file

    # lr 0: epoch 0 is the best and nothing later beats it; last.ckpt must still be the latest epoch, or a
    # stopped run would resume from an older one (Lightning's save_last writes only with a new best).
    cfg = quick_config(tmp_path, "trainer.max_epochs=3", "trainer.patience=0", "trainer.lr=0",
                       "trainer.limit_train_batches=2", "tracking.enabled=false")
    result = train(cfg)
    checkpoints = result.run_dir / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best.ckpt", "last.ckpt"]
    assert load_checkpoint_file(checkpoints / "last.ckpt")["epoch"] == 2
    assert load_checkpoint_file(checkpoints / "best.ckpt")["epoch"] == 0
    assert result.metrics["best_epoch"] == 1  # counted from 1


def test_resume_with_more_patience_trains_on_after_an_early_stop(tmp_path: Path) -> None:
    # lr 0: every epoch scores the same, so patience 1 stops after epoch 1; resumed with patience 3 the run
    # goes on to epoch 3 (the wait count carries over). Lightning alone would restore the saved patience 1
    # and stop again after one epoch.
    quick = ["trainer.lr=0", "trainer.limit_train_batches=2", "tracking.enabled=false", "trainer.max_epochs=8"]
    stopped = train(quick_config(tmp_path, *quick, "trainer.patience=1"))
    assert [int(row["epoch"]) for row in stopped.history] == [0, 1]

    resumed = train(resume_config(stopped.run_dir, ["trainer.patience=3"]), resume=stopped.run_dir)
    assert [int(row["epoch"]) for row in resumed.history] == [0, 1, 2, 3]
    assert resumed.metrics["best_epoch"] == 1


def test_early_stopping_state_from_plain_lightning_checkpoints_still_loads() -> None:
    # Runs checkpointed before ConfiguredEarlyStopping (plain EarlyStopping) must resume with their wait count.
    from lightning.pytorch.callbacks import EarlyStopping

    from recsys.training.callbacks import ConfiguredEarlyStopping

    plain = EarlyStopping(monitor="val_ndcg@10", mode="max", patience=20)
    plain.wait_count = 20
    configured = ConfiguredEarlyStopping(monitor="val_ndcg@10", mode="max", patience=40)
    assert configured.state_key == plain.state_key
    configured.load_state_dict(plain.state_dict())
    assert (configured.patience, configured.wait_count) == (40, 20)


def test_time_budget_must_be_positive(tmp_path: Path) -> None:
    from recsys.errors import ConfigError

    with pytest.raises(ConfigError, match=r"trainer.max_minutes: must be greater than 0, got 0.0"):
        quick_config(tmp_path, "trainer.max_minutes=0")
