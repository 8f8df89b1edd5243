"""`recsys tune`: a hyperparameter search on the validation split with Optuna, tracked in MLflow.

Every trial is the run config, its overrides and the values the sampler (TPE, seeded from trainer.seed) drew
from the search space (`search_space.py`), trained by `train()` as a validation-only run: the test split is
withheld, never batched nor scored, so the choice of a config cannot lean on the test targets. A Lightning
callback hands each epoch's validation NDCG@10 to the trial; when the pruner (Optuna's MedianPruner by
default) says the trial is worse than the others were at that epoch, the fit stops cleanly (the run keeps its
best epoch, its MLflow run is closed KILLED and tagged optuna.state PRUNED) and the trial is PRUNED in Optuna.
A trial that fails (a combination of values the model refuses, a diverging loss) is FAIL in Optuna, its
MLflow run FAILED, and the study goes on.

A study is one folder (--study-dir), so a second `recsys tune` on it resumes it, counting the trials done:
  study.db          Optuna's storage (SQLite): trials, their values and their per-epoch validation values
  study.lock        held while a `recsys tune` works on the folder (two processes never share a study)
  mlflow.db, mlartifacts/   the MLflow store, unless tracking.tracking_uri or $MLFLOW_TRACKING_URI names one:
                    one parent run for the study, each trial a nested run under it (tag mlflow.parentRunId)
  trials/           each trial's run folder as `recsys train` writes it (its checkpoints removed once it ends)
  logs/trial-N.log  what trial N's training printed; the console gets one line per trial
  best.yaml         the best config so far, a run config for `recsys train --config` (rewritten durably)
  plots/            optimization_history.png, intermediate_values.png, param_importances.png; trials.csv

--max-minutes bounds the study: Optuna starts no trial after it, and each trial's trainer.max_minutes is
capped to what is left of it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import lightning as L

from recsys.config import flatten, load_yaml, yaml_text
from recsys.durable import replacing, write_text
from recsys.errors import ConfigError
from recsys.run_config import RunConfig, run_config_from_dict
from recsys.training.module import VAL_MONITOR
from recsys.training.publish import experiment_name
from recsys.training.search_space import SearchSpace, as_overrides, load_search_space
from recsys.training.tracking import Tracker
from recsys.training.train import failure_reason, quiet_libraries, train

STUDY_NAME = "recsys-tune"
OBJECTIVE = "valid_ndcg@10"
"""What a trial's value is: validation NDCG@10 of its best epoch (the metric early stopping watches)."""
RUN_ONLY_KEYS = ("trainer.threads", "trainer.progress_bar", "trainer.num_workers", "trainer.max_minutes",
                 "trainer.accelerator", "trainer.devices", "tracking.")
"""Keys that say how a run runs, not what it trains: a resumed study may change them, not the others."""


@dataclasses.dataclass
class TuneResult:
    study_dir: Path
    trials: int  # in the study, this invocation's included
    ran: int  # trials this invocation ran
    states: dict[str, int]  # COMPLETE, PRUNED, FAIL: how many of the study's trials ended so
    best_trial: int | None  # None until a trial completes
    best_value: float | None
    best_params: dict[str, Any]
    best_config: Path | None
    parent_run_id: str | None
    tracking_uri: str
    plots: list[Path]
    notes: list[str]  # what could not be drawn, and why


def tune(config_file: str | Path | None, overrides: list[str] | tuple[str, ...], study_dir: str | Path,
         n_trials: int | None = None, max_minutes: float | None = None, space_file: str | Path | None = None,
         pruner: Any = None, trial_minutes: float | None = None, say: Callable[[str], None] = print) -> TuneResult:
    """Run (or resume) the study in `study_dir` until it holds `n_trials` trials or `max_minutes` have passed.

    `pruner`: an Optuna pruner (None: MedianPruner after 3 trials and 5 epochs; `optuna.pruners.NopPruner()`
    never prunes). `trial_minutes` caps each trial's training (a budget of the search, so not written into
    best.yaml, unlike a trainer.max_minutes override). `say` gets one line per trial."""
    if n_trials is None and max_minutes is None:
        raise ConfigError("tune: give --trials N or --max-minutes M (or both): a study needs an end")
    started = time.monotonic()
    deadline = started + max_minutes * 60 if max_minutes is not None else None
    study_dir = Path(study_dir)
    base = load_yaml(config_file) if config_file is not None else {}
    where = str(config_file) if config_file is not None else "config"
    cfg = run_config_from_dict(base, where=where, overrides=overrides)
    space = load_search_space(space_file, cfg.model_name, base, overrides)
    study_dir.mkdir(parents=True, exist_ok=True)
    quiet_libraries()
    with _study_lock(study_dir):
        _prepare_data(cfg)  # once, before any trial: a missing dataset is one error, not N failed trials
        study = _open_study(study_dir, cfg, space, pruner)
        _fail_stale_trials(study)
        done = len(study.trials)
        left = None if n_trials is None else max(0, n_trials - done)
        tracking_uri = _tracking_uri(cfg, study_dir)
        parent = _parent_run(study, cfg, tracking_uri, study_dir, space, config_file)
        objective = _Objective(base, where, overrides, space, cfg, study_dir, tracking_uri, parent, deadline,
                               trial_minutes)
        if left == 0:
            say(f"{study_dir}: the study already has {done} trials (--trials {n_trials}); nothing to run")
        else:
            say(f"{study_dir}: {done} trials done; running " + (f"{left} more" if left is not None else "trials")
                + (f" for at most {max_minutes:g} minutes" if max_minutes is not None else "")
                + f", {len(space.params)} keys from {space.source}")
            progress = _Progress(study_dir, base, where, overrides, parent, say, started)
            try:
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                study.optimize(objective, n_trials=left, timeout=timeout, catch=(Exception,),
                               callbacks=[progress])
            except BaseException:  # interrupted (Lightning turns Ctrl-C into SystemExit): not left RUNNING
                _fail_stale_trials(study)
                parent.finish("KILLED")
                raise
        return _finish_study(study, study_dir, base, where, overrides, parent, tracking_uri, len(study.trials) - done)


# ---------------------------------------------------------------------------------------------------------
# One trial


class PruneOnValidation(L.Callback):
    """Reports each epoch's validation NDCG@10 to the Optuna trial (step = the epoch, counted from 1) and,
    when the trial's pruner says so, stops the fit after that epoch, as early stopping would: the run ends
    cleanly, keeps its best epoch and closes its MLflow run; the objective then raises TrialPruned."""

    def __init__(self, trial: Any) -> None:
        self.trial = trial
        self.pruned_at: int | None = None  # the epoch (from 1) after which the trial was pruned

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(VAL_MONITOR)
        if trainer.sanity_checking or value is None or self.pruned_at is not None:
            return
        epoch = trainer.current_epoch + 1
        self.trial.report(float(value), step=epoch)
        if self.trial.should_prune():
            self.pruned_at = epoch
            trainer.should_stop = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.pruned_at is not None:  # a cool-down fit after the pruned one (trainer.cooldown_epochs): none
            trainer.should_stop = True


class _Objective:
    """A trial: sample, train on validation only, hand Optuna the value (or TrialPruned, or the error)."""

    def __init__(self, base: dict[str, Any], where: str, overrides: list[str] | tuple[str, ...],
                 space: SearchSpace, cfg: RunConfig, study_dir: Path, tracking_uri: str, parent: Tracker,
                 deadline: float | None, trial_minutes: float | None) -> None:
        self.base, self.where, self.overrides, self.space, self.cfg = base, where, list(overrides), space, cfg
        self.study_dir, self.tracking_uri, self.parent, self.deadline = study_dir, tracking_uri, parent, deadline
        self.trial_minutes = trial_minutes

    def __call__(self, trial: Any) -> float:
        import optuna

        values = self.space.sample(trial)
        log = self.study_dir / "logs" / f"trial-{trial.number}.log"
        log.parent.mkdir(exist_ok=True)
        trial.set_user_attr("log", str(log))
        pruning = PruneOnValidation(trial)
        try:
            trial_cfg = run_config_from_dict(self.base, where=self.where,
                                             overrides=[*self.overrides, *as_overrides(values), *self._trial_keys(trial)])
            with open(log, "w", encoding="utf-8") as handle, contextlib.redirect_stderr(handle):
                tags = {"mlflow.parentRunId": self.parent.run_id or "", "optuna.trial": str(trial.number)}
                result = train(trial_cfg, callbacks=[pruning], test=False,
                               tags=tags if self.parent.active else None)
        except Exception as exc:
            trial.set_user_attr("failure", failure_reason(exc))
            raise
        shutil.rmtree(result.run_dir / "checkpoints", ignore_errors=True)  # a trial is never resumed
        trial.set_user_attr("run_dir", str(result.run_dir))
        trial.set_user_attr("epochs_run", int(result.metrics.get("epochs_run", 0)))
        trial.set_user_attr("best_epoch", int(result.metrics.get("best_epoch", -1)))
        if result.run_id:
            trial.set_user_attr("mlflow_run_id", result.run_id)
        value = result.metrics[OBJECTIVE]
        if not math.isfinite(value):  # a loss that diverged to NaN scores every item alike
            trial.set_user_attr("failure", f"{OBJECTIVE} is {value}")
            self._close_child(result.run_id, "FAIL", "FAILED")
            raise ValueError(f"{OBJECTIVE} is {value}")
        if pruning.pruned_at is not None:
            trial.set_user_attr("pruned_at", pruning.pruned_at)
            self._close_child(result.run_id, "PRUNED", "KILLED")
            raise optuna.TrialPruned(f"pruned after epoch {pruning.pruned_at}")
        self._close_child(result.run_id, "COMPLETE", "FINISHED")
        return float(value)

    def _trial_keys(self, trial: Any) -> list[str]:
        """Where a trial's run goes, and its time: trainer.max_minutes capped to what is left of the study."""
        keys: dict[str, Any] = {"tracking.output_dir": str(self.study_dir / "trials"),
                                "tracking.tracking_uri": self.tracking_uri,
                                "tracking.run_name": f"trial-{trial.number}", "tracking.register_as": None,
                                "trainer.progress_bar": False}
        caps = [m for m in (self.cfg.trainer.max_minutes, self.trial_minutes) if m is not None]
        if self.deadline is not None:
            caps.append(max((self.deadline - time.monotonic()) / 60, 0.01))
        if caps:
            keys["trainer.max_minutes"] = min(caps)
        return as_overrides(keys)

    def _close_child(self, run_id: str | None, state: str, status: str) -> None:
        """The trial's MLflow run (closed FINISHED by train) tagged with its Optuna state; KILLED if pruned."""
        if run_id is None or not self.parent.active:
            return
        child = Tracker(self.tracking_uri, experiment_name(self.cfg), "", run_id=run_id)
        child.set_tags({"optuna.state": state})
        child.finish(status)


class _Progress:
    """After each trial: its line for the console, its value on the parent run, best.yaml when it is the best."""

    def __init__(self, study_dir: Path, base: dict[str, Any], where: str, overrides: list[str] | tuple[str, ...],
                 parent: Tracker, say: Callable[[str], None], started: float) -> None:
        self.study_dir, self.base, self.where, self.overrides = study_dir, base, where, overrides
        self.parent, self.say, self.started = parent, say, started

    def __call__(self, study: Any, trial: Any) -> None:
        from optuna.trial import TrialState

        if trial.state == TrialState.COMPLETE:
            self.parent.log_metrics({"trial_value": trial.value}, step=trial.number)
            if study.best_trial.number == trial.number:
                write_best_config(self.study_dir, study, self.base, self.where, self.overrides)
        self.say(trial_line(study, trial, time.monotonic() - self.started))


def trial_line(study: Any, trial: Any, elapsed_s: float) -> str:
    """`trial 3  COMPLETE  valid ndcg@10 0.1081  epochs 14 (best 9)  38 s  model.hidden=64 ...  [best: trial 3
    0.1081]  elapsed 2.1 min`: one line per trial, whatever its end."""
    from optuna.trial import TrialState

    attrs = trial.user_attrs
    seconds = trial.duration.total_seconds() if trial.duration is not None else 0.0
    if trial.state == TrialState.COMPLETE:
        outcome = f"valid ndcg@10 {trial.value:.4f}  epochs {attrs.get('epochs_run', '?')} (best {attrs.get('best_epoch', '?')})"
    elif trial.state == TrialState.PRUNED:
        last = trial.intermediate_values.get(attrs.get("pruned_at", -1))
        outcome = f"pruned after epoch {attrs.get('pruned_at', '?')}" + (f" (val ndcg@10 {last:.4f})" if last is not None else "")
    else:
        outcome = f"failed: {attrs.get('failure', 'see its log')} (log: {attrs.get('log', '-')})"
    params = " ".join(f"{key}={_short(value)}" for key, value in trial.params.items())
    completed = [t for t in study.trials if t.state == TrialState.COMPLETE]
    best = f"[best: trial {study.best_trial.number} {study.best_value:.4f}]" if completed else "[best: none yet]"
    return (f"trial {trial.number}  {trial.state.name}  {outcome}  {seconds:.0f} s  {params}  {best}  "
            f"elapsed {elapsed_s / 60:.1f} min")


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else yaml_text(value)


# ---------------------------------------------------------------------------------------------------------
# The study: its storage, its lock, its parent MLflow run


@contextlib.contextmanager
def _study_lock(study_dir: Path) -> Iterator[None]:
    from filelock import FileLock, Timeout

    lock = FileLock(study_dir / "study.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise ConfigError(f"{study_dir}: another `recsys tune` is working on this study (it holds "
                          f"{study_dir / 'study.lock'}); wait for it, or give another --study-dir") from None
    try:
        yield
    finally:
        lock.release()


def _prepare_data(cfg: RunConfig) -> None:
    from recsys.data.prepare import prepare_dataset

    prepare_dataset(cfg.data, progress=False)


def _open_study(study_dir: Path, cfg: RunConfig, space: SearchSpace, pruner: Any) -> Any:
    """The study in study_dir/study.db, created or loaded; a resumed one must have the same config and space."""
    import optuna

    optuna.logging.disable_default_handler()  # each trial gets our one line; failures their reason and log
    storage = optuna.storages.RDBStorage(f"sqlite:///{(study_dir / 'study.db').resolve()}",
                                         engine_kwargs={"connect_args": {"timeout": 60}})
    existing = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    done = 0
    if STUDY_NAME in existing:
        done = len(optuna.load_study(study_name=STUDY_NAME, storage=storage).trials)
    # Seeded by trainer.seed and the trials done: reproducible, and a resumed study does not draw the same
    # first values again (TPE's start-up trials are random draws).
    sampler = optuna.samplers.TPESampler(seed=cfg.trainer.seed + done)
    if pruner is None:
        pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=5)
    study = optuna.create_study(study_name=STUDY_NAME, storage=storage, direction="maximize", sampler=sampler,
                                pruner=pruner, load_if_exists=True)
    config, kept = _what_it_trains(cfg), study.user_attrs.get("config")
    if kept is None:
        study.set_user_attr("config", config)
        study.set_user_attr("space", space.to_dict())
        study.set_user_attr("model", cfg.model_name)
        return study
    _refuse_other_study(study_dir, kept, config, study.user_attrs.get("space"), space)
    return study


def _what_it_trains(cfg: RunConfig) -> dict[str, Any]:
    return {k: yaml_text(v) for k, v in flatten(cfg.to_dict()).items() if not k.startswith(RUN_ONLY_KEYS)}


def _refuse_other_study(study_dir: Path, kept: dict[str, Any], config: dict[str, Any], kept_space: Any,
                        space: SearchSpace) -> None:
    for key in sorted(set(kept) | set(config)):
        if kept.get(key) != config.get(key):
            raise ConfigError(f"{study_dir}: this study was started with {key}={kept.get(key, '(none)')}, not "
                              f"{config.get(key, '(none)')}; resume it with the same config and overrides, or give "
                              "another --study-dir")
    if kept_space != space.to_dict():
        raise ConfigError(f"{study_dir}: this study was started with another search space than {space.source}; "
                          "resume it with the same space, or give another --study-dir")


def _fail_stale_trials(study: Any) -> None:
    """Trials left RUNNING by a `recsys tune` that was killed (the lock says none runs now): FAIL, counted."""
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL)


def _tracking_uri(cfg: RunConfig, study_dir: Path) -> str:
    """The config's or $MLFLOW_TRACKING_URI's store, else one beside the study: study_dir/mlflow.db."""
    return (cfg.tracking.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
            or f"sqlite:///{(study_dir / 'mlflow.db').resolve()}")


def _parent_run(study: Any, cfg: RunConfig, tracking_uri: str, study_dir: Path, space: SearchSpace,
                config_file: str | Path | None) -> Tracker:
    """The study's MLflow run: created with the study, reopened when it resumes."""
    run_id = study.user_attrs.get("mlflow_parent_run_id")
    parent = Tracker(tracking_uri, experiment_name(cfg), f"tune-{cfg.model_name}-{cfg.data.name}-{study_dir.name}",
                     run_id=run_id, enabled=cfg.tracking.enabled)
    if parent.active and run_id is None:
        study.set_user_attr("mlflow_parent_run_id", parent.run_id)
        parent.log_params({f"space.{key}": spec for key, spec in space.to_dict().items()})
        parent.log_params(flatten(cfg.to_dict()))
        parent.set_tags({"recsys.tune": "study", "model": cfg.model_name, "dataset": cfg.data.name,
                         "study_dir": str(study_dir.resolve()), "objective": OBJECTIVE,
                         "mlflow.note.content": f"recsys tune: {cfg.model_name} on {cfg.data.name}, {OBJECTIVE} on the "
                         f"validation split (the test split is never read); study {study_dir.resolve()}"})
        if config_file is not None:
            parent.log_artifact(config_file, "source_config")
        if Path(space.source).is_file():
            parent.log_artifact(space.source, "search_space")
    return parent


# ---------------------------------------------------------------------------------------------------------
# What a study leaves: best.yaml, plots, trials.csv


def best_config(study: Any, base: dict[str, Any], where: str, overrides: list[str] | tuple[str, ...]) -> RunConfig:
    """The run config of the study's best trial: the config, its overrides and the trial's values."""
    return run_config_from_dict(base, where=where, overrides=[*overrides, *as_overrides(study.best_trial.params)])


def write_best_config(study_dir: Path, study: Any, base: dict[str, Any], where: str,
                      overrides: list[str] | tuple[str, ...]) -> Path:
    """study_dir/best.yaml, durably: the best trial's run config, with where it came from as comments."""
    import yaml

    best = study.best_trial
    values = ", ".join(f"{key}={yaml_text(value)}" for key, value in best.params.items())
    header = [f"# The best config of the `recsys tune` study {study_dir.resolve()}:",
              f"# trial {best.number} of {len(study.trials)}, {OBJECTIVE} {best.value:.4f} (validation split; the "
              "test split was not read).",
              f"# Its values: {values}",
              f"# From {where}" + (f" with {' '.join(overrides)}" if overrides else "") + ".",
              f"# Train it: recsys train --config {study_dir / 'best.yaml'}"]
    text = "\n".join(header) + "\n" + yaml.safe_dump(best_config(study, base, where, overrides).to_dict(),
                                                     sort_keys=False)
    path = study_dir / "best.yaml"
    write_text(path, text)
    return path


def _finish_study(study: Any, study_dir: Path, base: dict[str, Any], where: str, overrides: list[str] | tuple[str, ...],
                  parent: Tracker, tracking_uri: str, ran: int) -> TuneResult:
    from optuna.trial import TrialState

    states = {state.name: len(study.get_trials(deepcopy=False, states=(state,)))
              for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    completed = states["COMPLETE"] > 0
    best_path = write_best_config(study_dir, study, base, where, overrides) if completed else None
    plots, notes = save_study_plots(study, study_dir / "plots")
    trials_csv = study_dir / "trials.csv"
    with replacing(trials_csv) as tmp:
        study.trials_dataframe().to_csv(tmp, index=False)
    if parent.active:
        parent.log_metrics({"n_complete": states["COMPLETE"], "n_pruned": states["PRUNED"],
                            "n_failed": states["FAIL"], **({"best_value": study.best_value} if completed else {})},
                           step=len(study.trials))
        if completed:
            parent.set_tags({"best_trial": str(study.best_trial.number)})
            parent.log_artifact(best_path)
        parent.log_artifact(study_dir / "plots", "plots")
        parent.log_artifact(trials_csv)
        parent.finish()
    return TuneResult(study_dir, len(study.trials), ran, states, study.best_trial.number if completed else None,
                      study.best_value if completed else None, dict(study.best_trial.params) if completed else {},
                      best_path, parent.run_id if parent.active else None, tracking_uri, plots, notes)


def save_study_plots(study: Any, folder: Path) -> tuple[list[Path], list[str]]:
    """Optuna's matplotlib plots of the study (PNG), and a note for each one it cannot draw yet."""
    import warnings

    import matplotlib
    import optuna
    from optuna.trial import TrialState

    folder.mkdir(parents=True, exist_ok=True)
    completed = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    plots, notes = [], []
    drawings: list[tuple[str, str, int]] = [("optimization_history", "plot_optimization_history", 1),
                                            ("intermediate_values", "plot_intermediate_values", 1),
                                            ("param_importances", "plot_param_importances", 2)]
    for name, function, needs in drawings:
        if completed < needs:
            notes.append(f"{name}: not drawn, it needs {needs} completed trial{'s' if needs > 1 else ''} "
                         f"({completed} so far)")
            continue
        try:
            # rc_context: Optuna switches matplotlib's global style to ggplot, which must not outlive its plots
            with warnings.catch_warnings(), matplotlib.rc_context():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
                axes = getattr(optuna.visualization.matplotlib, function)(study)
                plots.append(_save_figure(axes, folder / f"{name}.png"))
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # e.g. importances when no value varied
            notes.append(f"{name}: not drawn ({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__})")
    return plots, notes


def _save_figure(axes: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
    figure.set_size_inches(8, 5)
    figure.tight_layout()
    with replacing(path) as tmp:
        figure.savefig(tmp, dpi=100, format="png")
    plt.close(figure)
    return path


__all__ = ["PruneOnValidation", "TuneResult", "best_config", "save_study_plots", "trial_line", "tune",
           "write_best_config"]
