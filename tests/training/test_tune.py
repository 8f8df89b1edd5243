"""`recsys tune` end to end on the embedded ml-latest-small, cut short: real Optuna SQLite storage, a real MLflow
store, real training. Trials are 1-2 epochs of a tiny SASRec, so the whole file takes well under a minute."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from recsys.cli import main
from recsys.errors import ConfigError
from recsys.run_config import load_run_config
from recsys.training.search_space import load_search_space
from recsys.training.train import train
from recsys.training.tune import STUDY_NAME, tune
from tests.training.test_train import QUICK

CONFIG = Path(__file__).parents[1] / "configs" / "sasrec_small.yaml"
TINY = [*QUICK, "model.n_layers=1", "trainer.max_epochs=2", "trainer.patience=0"]
SPACE = """\
model.hidden: {type: categorical, choices: [16, 32]}
trainer.lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
"""


def write_space(folder: Path, text: str = SPACE) -> Path:
    path = folder / "space.yaml"
    path.write_text(text)
    return path


def load_study(study_dir: Path) -> optuna.Study:
    return optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{study_dir / 'study.db'}")


def client_of(study_dir: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{(study_dir / 'mlflow.db').resolve()}")


class AlwaysPrune(optuna.pruners.BasePruner):
    """Prunes every trial at its first report: a pruned trial without depending on how well it learns."""

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return True


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory):
    """A study of 2 trials; the resume test adds a third to it."""
    folder = tmp_path_factory.mktemp("tune")
    lines: list[str] = []
    result = tune(CONFIG, TINY, folder / "study", n_trials=2, space_file=write_space(folder), say=lines.append)
    return folder, result, lines


def test_trials_are_nested_mlflow_runs_under_one_parent(study) -> None:
    folder, result, lines = study
    assert result.states == {"COMPLETE": 2, "PRUNED": 0, "FAIL": 0} and result.ran == 2
    client = client_of(folder / "study")
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["recsys.tune"] == "study"
    assert parent.data.metrics["best_value"] == pytest.approx(result.best_value, abs=1e-9)
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{result.parent_run_id}'")
    assert len(children) == 2
    trials = {t.user_attrs["mlflow_run_id"]: t for t in load_study(folder / "study").trials}
    for child in children:
        trial = trials[child.info.run_id]
        assert child.info.status == "FINISHED" and child.data.tags["optuna.state"] == "COMPLETE"
        assert child.data.params["model.hidden"] == str(trial.params["model.hidden"])  # the sampled values
        assert float(child.data.params["trainer.lr"]) == pytest.approx(trial.params["trainer.lr"], rel=1e-9)
        assert child.data.metrics["valid_ndcg_at_10"] == pytest.approx(trial.value, abs=1e-9)
        curve = client.get_metric_history(child.info.run_id, "val_ndcg_at_10")
        assert [m.step for m in curve] == [1, 2]  # per-epoch validation, also reported to Optuna
        assert sorted(trial.intermediate_values) == [1, 2]
    plots = {a.path for a in client.list_artifacts(result.parent_run_id, "plots")}
    assert {"plots/optimization_history.png", "plots/param_importances.png"} <= plots
    assert {"best.yaml", "trials.csv"} <= {a.path for a in client.list_artifacts(result.parent_run_id)}
    assert all((folder / "study" / "plots" / name).stat().st_size > 1000
               for name in ("optimization_history.png", "param_importances.png", "intermediate_values.png"))
    assert [line.split()[:3] for line in lines[1:]] == [["trial", "0", "COMPLETE"], ["trial", "1", "COMPLETE"]]
    assert "model.hidden=" in lines[1] and "trainer.lr=" in lines[1] and "valid ndcg@10 0." in lines[1]


def test_trials_never_read_the_test_split(study) -> None:
    folder, result, _ = study
    client = client_of(folder / "study")
    for trial in load_study(folder / "study").trials:
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.data.tags["recsys.test_split"] == "withheld"
        assert "valid_ndcg_at_10" in run.data.metrics
        assert not [key for key in run.data.metrics if key.startswith("test")]
        assert run.data.params["split.n_test"] == "0"  # the split the trial saw had no test rows at all
        saved = json.loads((Path(trial.user_attrs["run_dir"]) / "model" / "metrics.json").read_text())
        assert not [key for key in saved if key.startswith("test")]


def test_train_without_test_builds_no_test_rows(tmp_path: Path) -> None:
    import lightning as L

    class Watch(L.Callback):
        def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            self.test_rows = trainer.datamodule.split.test.height
            self.test_batches = trainer.datamodule._test

    watch = Watch()
    cfg = load_run_config(CONFIG, [*TINY, "trainer.max_epochs=1", f"tracking.output_dir={tmp_path / 'runs'}",
                                   "tracking.enabled=false"])
    result = train(cfg, callbacks=[watch], test=False)
    assert watch.test_rows == 0 and watch.test_batches is None
    assert "valid_ndcg@10" in result.metrics and not [k for k in result.metrics if k.startswith("test")]


def test_best_yaml_loads_and_trains_with_recsys_train(study, tmp_path: Path) -> None:
    folder, result, _ = study
    best = load_run_config(result.best_config)  # the normal loader: it validates
    trial = load_study(folder / "study").best_trial
    assert best.model.hidden == trial.params["model.hidden"]
    assert best.trainer.lr == pytest.approx(trial.params["trainer.lr"], rel=1e-12)
    assert best.model.n_layers == 1 and best.data.max_history == 30  # the command's overrides are kept
    assert "valid_ndcg@10" in result.best_config.read_text().splitlines()[1]
    done = train(load_run_config(result.best_config, ["trainer.max_epochs=1", f"tracking.output_dir={tmp_path}",
                                                      "tracking.enabled=false"]))
    assert 0.0 <= done.metrics["test_ndcg@10"] <= 1.0


def test_the_same_seed_draws_the_same_first_values(study) -> None:
    folder, _, _ = study
    space = load_search_space(write_space(folder), "sasrec", {})
    fresh = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=42))
    drawn = space.sample(fresh.ask())
    assert drawn == load_study(folder / "study").trials[0].params


def test_a_second_run_resumes_the_study(study) -> None:
    folder, first, _ = study
    lines: list[str] = []
    result = tune(CONFIG, TINY, folder / "study", n_trials=3, space_file=write_space(folder), say=lines.append)
    assert result.ran == 1 and result.trials == 3  # 3 in all, not 2 + 3
    assert len(load_study(folder / "study").trials) == 3
    assert result.parent_run_id == first.parent_run_id  # the same MLflow parent run goes on
    children = client_of(folder / "study").search_runs(
        [client_of(folder / "study").get_run(first.parent_run_id).info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{first.parent_run_id}'")
    assert len(children) == 3
    assert lines[0].endswith(f"2 trials done; running 1 more, 2 keys from {folder / 'space.yaml'}")

    with pytest.raises(ConfigError, match=r"study was started with model.n_layers=1, not 2"):
        tune(CONFIG, [*TINY, "model.n_layers=2"], folder / "study", n_trials=4, space_file=write_space(folder))


def test_a_pruned_trial_is_pruned_in_optuna_and_killed_in_mlflow(tmp_path: Path) -> None:
    lines: list[str] = []
    result = tune(CONFIG, TINY, tmp_path / "study", n_trials=1, space_file=write_space(tmp_path),
                  pruner=AlwaysPrune(), say=lines.append)
    (trial,) = load_study(tmp_path / "study").trials
    assert trial.state == TrialState.PRUNED and trial.user_attrs["pruned_at"] == 1
    assert trial.user_attrs["epochs_run"] == 1  # stopped after the epoch it was pruned at, not at max_epochs 2
    run = client_of(tmp_path / "study").get_run(trial.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED" and run.data.tags["optuna.state"] == "PRUNED"
    assert result.best_config is None and not (tmp_path / "study" / "best.yaml").exists()
    assert "optimization_history: not drawn, it needs 1 completed trial (0 so far)" in result.notes
    assert "PRUNED  pruned after epoch 1 (val ndcg@10 0." in lines[1]


def test_failed_trials_do_not_end_the_study(tmp_path: Path) -> None:
    # Each value is valid alone (checked when the space loads); together 4 heads do not divide a width of 30.
    space = write_space(tmp_path, "model.hidden: {type: categorical, choices: [30]}\n"
                                  "model.n_heads: {type: categorical, choices: [4]}\n")
    lines: list[str] = []
    result = tune(CONFIG, TINY, tmp_path / "study", n_trials=2, space_file=space, say=lines.append)
    assert result.states == {"COMPLETE": 0, "PRUNED": 0, "FAIL": 2}
    assert [t.state for t in load_study(tmp_path / "study").trials] == [TrialState.FAIL, TrialState.FAIL]
    assert "FAIL  failed: " in lines[1] and "hidden (30) must be divisible by n_heads (4)" in lines[1]


def test_max_minutes_caps_each_trial_to_what_is_left(tmp_path: Path) -> None:
    result = tune(CONFIG, TINY, tmp_path / "study", n_trials=1, max_minutes=1.0, trial_minutes=0.5,
                  space_file=write_space(tmp_path), say=lambda line: None)
    caps = [load_run_config(Path(t.user_attrs["run_dir"]) / "config.yaml").trainer.max_minutes
            for t in load_study(tmp_path / "study").trials]
    # each at most --trial-minutes, and at most what was left of the minute when it started
    assert len(caps) == 1 and 0 < caps[0] <= 0.5
    # a budget of the search, not of the config: best.yaml trains as long as the config says
    assert load_run_config(result.best_config).trainer.max_minutes is None


def test_no_trial_starts_once_the_time_is_up(tmp_path: Path) -> None:
    # 0.06 ms: spent before the first trial could start (preparing the data, opening the stores take longer)
    result = tune(CONFIG, TINY, tmp_path / "study", max_minutes=1e-6, space_file=write_space(tmp_path),
                  say=lambda line: None)
    assert result.ran == 0 and result.trials == 0 and result.best_config is None


@pytest.mark.parametrize("text, message", [
    ("model.hiden: {type: int, low: 1, high: 3}\n",
     "space.yaml: model.hiden: the value 1 does not make a valid run config (model.hiden: unknown key"),
    ("model.dropout: {type: float, low: 0.0, high: 1.5}\n",
     "space.yaml: model.dropout: the value 1.5 does not make a valid run config (model.dropout: must be in [0, 1)"),
    ("trainer.lr: {type: float, low: 0.0, high: 0.1, log: true}\n",
     "space.yaml: trainer.lr.low: must be greater than 0 with log: true, got 0"),
    ("model.n_layers: {type: int, low: 3, high: 1}\n", "space.yaml: model.n_layers.high: must be at least low (3), got 1"),
    ("model.n_layers: {type: integer, low: 1, high: 3}\n",
     "space.yaml: model.n_layers.type: 'integer' is not one of 'categorical', 'int', 'float'"),
    ("model.hidden: {type: categorical, choices: []}\n", "space.yaml: model.hidden.choices:"),
    ("model.hidden: {type: int, low: 1, hi: 3}\n", "space.yaml: model.hidden.high: missing key"),
    ("hidden: {type: int, low: 1, high: 3}\n", "space.yaml: hidden: not a config key (write section.key"),
])
def test_a_bad_space_file_is_one_line_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     text: str, message: str) -> None:
    space = write_space(tmp_path, text)
    status = main(["tune", str(CONFIG), *TINY, "--trials", "1", "--study-dir", str(tmp_path / "study"),
                   "--space", str(space)])
    err = capsys.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    assert message in err
    assert not (tmp_path / "study").exists()  # refused before anything was written
