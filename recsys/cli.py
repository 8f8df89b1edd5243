"""The `recsys` command line. Parsing lives here and only here.

Start-up must stay fast (`recsys --help` well under a second): this module imports nothing heavy at the top;
each command imports torch, Lightning or MLflow inside its handler, only when it runs.
"""

from __future__ import annotations

import argparse
import functools
import sys
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from recsys.config import DataConfig, KeyHelp

from recsys.errors import RecsysError

# recsys.retrieval.index.KINDS, spelled out: importing it would load numpy and FAISS into every --help
# (tests/cli/test_cli.py keeps the two equal).
INDEX_KINDS = ("flat", "hnsw", "ivf", "ivfpq")

Handler = Callable[[argparse.Namespace], int]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0
    try:
        status = handler(args)
        sys.stdout.flush()  # here, not at exit: a reader that went away (`| head`) is then caught below
        return status
    except BrokenPipeError:
        return _reader_gone()
    except RecsysError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk, a permission: the system's words, with the path, not a traceback
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _reader_gone() -> int:
    """stdout's reader closed the pipe (`recsys evaluate --format json | head`): what it wanted it has, so
    no message; stdout is pointed at /dev/null so that Python's flush at exit does not fail again. 141 is
    what a shell reports for a program that SIGPIPE ended (128 + 13)."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 141


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recsys",
        description="Sequential (next-item) recommendation: prepare data, train, evaluate, recommend, serve.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'recsys <command> --help' for the options of a command.",
    )
    commands = parser.add_subparsers(title="commands", metavar="<command>")
    add_data_commands(commands)
    add_train_command(commands)
    add_tune_command(commands)
    add_evaluate_command(commands)
    add_recommend_command(commands)
    add_serve_command(commands)
    add_index_commands(commands)
    add_config_commands(commands)
    return parser


def _command_group(commands: argparse._SubParsersAction, name: str, help: str) -> argparse._SubParsersAction:  # type: ignore[type-arg]
    """A command that only groups sub-commands (`recsys data ...`): alone, it prints its help."""
    group = commands.add_parser(name, help=help)
    group.set_defaults(handler=lambda _args: (group.print_help(), 0)[1])
    return group.add_subparsers(title=f"{name} commands", metavar=f"<{name} command>")


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default, except where it says nothing: none given (None), an on/off flag (off), or
    a help text that already says what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help = action.help or ""
        if action.default is None or action.nargs == 0 or "default" in help:
            return help
        return super()._get_help_string(action)


def _formatter(prog: str) -> argparse.HelpFormatter:
    return _DefaultsFormatter(prog, max_help_position=36)


class _ListingFormatter(_DefaultsFormatter):
    """Also keeps a listing laid out: lines of the description or epilog that start with a space stay as they
    are; the others are paragraphs, wrapped."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        fill = super()._fill_text
        return "\n".join(line if not line.strip() or line.startswith(" ") else fill(line, width, indent)
                         for line in text.splitlines())


def _listing_formatter(prog: str) -> argparse.HelpFormatter:
    return _ListingFormatter(prog, max_help_position=36)


# --------------------------------------------------------------------------------------------------------
# recsys data ...


def add_data_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    actions = _command_group(commands, "data", "prepare datasets and show their statistics")
    prepare = actions.add_parser(
        "prepare",
        help="read, filter and cache a dataset as sequences; print its statistics and cache folder",
        description="Read a dataset, filter it, map ids, build per-user sequences and cache them as Parquet "
        "(a second run reuses the cache). Datasets: ml-100k, ml-1m, ml-10m, ml-20m, ml-25m, ml-32m, "
        "ml-latest-small (embedded), or 'custom' with --from LOG.csv|.parquet.",
        formatter_class=_formatter,
    )
    stats = actions.add_parser(
        "stats",
        help="print a dataset's statistics (prepares it first if it is not cached)",
        formatter_class=_formatter,
    )
    for parser, command in ((prepare, "prepare"), (stats, "stats")):
        _add_data_options(parser)
        parser.set_defaults(handler=run_data, data_command=command)


# Keys of DataConfig that only a split reads: `data prepare` and `data stats` make no split.
SPLIT_KEYS = ("split", "valid_quantile", "test_quantile")


def _add_data_options(parser: argparse.ArgumentParser, statistics: bool = True, split: bool = False) -> None:
    """The dataset NAME, --from, and one option per DataConfig key (`--min-user-interactions` for
    data.min_user_interactions), with its docstring and default as help: DataConfig defines them once."""
    from recsys.config import DataConfig

    fields = DataConfig.model_fields
    parser.add_argument("name", help=f"data.name: {fields['name'].description}")
    parser.add_argument(
        "--from", dest="source", metavar="PATH", default=None,
        help="folder or zip of the raw release (data.path; custom: the interactions CSV/Parquet file, "
        "data.interactions_file); default: the embedded ml-latest-small or the folder "
        "data_scripts/fetch_movielens.py filled",
    )  # fmt: skip
    if statistics:
        parser.add_argument("--json", action="store_true", help="print the statistics as JSON")
    custom = parser.add_argument_group("custom logs (name 'custom')")
    for key, field in fields.items():
        if key in ("name", "path", "interactions_file") or (key in SPLIT_KEYS and not split):
            continue
        _add_config_option(custom if (field.description or "").startswith("custom:") else parser, "data", key)


def _add_config_option(parser: argparse._ActionsContainer, section: str, key: str) -> None:
    """`--some-key VALUE` for the config key section.some_key. Values are read as in a config file or an
    override (`4` an integer, `null` None), text keys taken as typed; the config class checks them."""
    from recsys.config import DataConfig

    doc = _data_keys()[f"{section}.{key}"]
    field = DataConfig.model_fields[key]
    shown = "" if doc.default == "null" else f"; default: {doc.default}"
    kwargs: dict[str, object] = {"dest": f"{section}.{key}", "default": None,
                                 "help": f"{doc.doc.removeprefix('custom: ')} ({doc.type}{shown})"}
    choices = _literal_choices(field.annotation)
    if choices:
        kwargs.update(choices=choices, metavar="{" + ",".join(choices) + "}")
    elif doc.type.startswith("[str"):
        kwargs.update(nargs="*", metavar="COLUMN")
    elif doc.type.startswith("str"):
        kwargs.update(metavar=key.upper())
    else:
        kwargs.update(type=_config_value, metavar="N" if doc.type.startswith("int") else "X")
    parser.add_argument(f"--{key.replace('_', '-')}", **kwargs)  # type: ignore[arg-type]


@functools.cache
def _data_keys() -> dict[str, KeyHelp]:
    from recsys.config import DataConfig, describe_keys

    return {key.key: key for key in describe_keys(DataConfig, "data.")}


def _literal_choices(hint: object) -> tuple[str, ...]:
    from typing import Literal, get_args, get_origin

    return tuple(get_args(hint)) if get_origin(hint) is Literal else ()


def _config_value(text: str) -> object:
    from recsys.config import parse_value

    return parse_value(text)


def _data_config(args: argparse.Namespace) -> DataConfig:
    """The DataConfig of the options given; the ones not given keep DataConfig's defaults."""
    from recsys.config import DataConfig, from_dict

    given = {key: getattr(args, f"data.{key}") for key in DataConfig.model_fields
             if getattr(args, f"data.{key}", None) is not None}
    given["name"] = args.name
    if args.source is not None:
        given["interactions_file" if args.name == "custom" else "path"] = args.source
    return from_dict(DataConfig, given, "data")


def _stat(value: object) -> str:
    """A statistic as people read it: 100,836 interactions; density 0.0170 (3 significant digits, which is
    what a density says; --json keeps every digit)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:#.3g}"


def run_data(args: argparse.Namespace) -> int:
    """`recsys data prepare|stats`: prepare (or reuse) the dataset and print its statistics."""
    import json

    from recsys.data.prepare import dataset_stats, leakage_warning, prepare_dataset, prepared_dir

    cfg = _data_config(args)
    ds = prepare_dataset(cfg, progress=args.data_command == "prepare" and sys.stderr.isatty())
    warning = leakage_warning(ds)
    if warning:
        print(warning, file=sys.stderr)
    stats = dataset_stats(ds)
    if args.data_command == "prepare":
        stats["cache"] = str(prepared_dir(cfg, ds.fingerprint))
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    lengths = stats.pop("sequence_length")
    width = max(len(key) for key in stats)
    for key, value in stats.items():
        print(f"{key:>{width}}: {_stat(value)}")
    shown = (f"{k} {v:,}" if isinstance(v, int) else f"{k} {v:,.1f}" for k, v in lengths.items())
    print(f"{'seq. length':>{width}}: " + ", ".join(shown))
    return 0


# --------------------------------------------------------------------------------------------------------
# recsys train / evaluate


def add_train_command(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    train = commands.add_parser(
        "train",
        help="train a model from a YAML config, track it in MLflow, save it",
        description="Train a model from a YAML config (see configs/), log the run to MLflow and save the "
        "model. Any config value can be overridden as section.key=value (sections: data, model, trainer, "
        "tracking), e.g. trainer.max_epochs=5 model.hidden=128. Prints the run folder, the MLflow run and "
        "the saved model directory.",
        formatter_class=_listing_formatter,
        epilog=_train_keys_epilog(),
    )
    train.add_argument("--config", default=None,
                       help="YAML run config (default: configs/sasrec_ml-latest-small.yaml of this folder, else of "
                       "the recsys checkout; the built-in defaults only without either)")
    train.add_argument("--resume", nargs="?", const="latest", default=None, metavar="RUN_DIR",
                       help="continue a run from its last checkpoint (no value: the newest run under "
                       "tracking.output_dir); the same MLflow run goes on, overrides such as trainer.max_epochs=400, "
                       "trainer.patience=40 or trainer.cooldown_epochs=20 apply to the rest of it")
    train.add_argument("--tracking-uri", default=None,
                       help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)")
    train.add_argument("--register", default=None, metavar="NAME",
                       help="register the saved model in the MLflow model registry under NAME")
    train.add_argument("overrides", nargs="*", metavar="key=value",
                       help="config overrides, e.g. trainer.max_epochs=5 data.preset=papers")
    train.set_defaults(handler=run_train)


def run_train(args: argparse.Namespace) -> int:
    from recsys.run_config import load_run_config
    from recsys.training.publish import seen_label, time_context_label
    from recsys.training.resume import latest_run_dir, resume_config
    from recsys.training.train import train

    overrides = list(args.overrides)
    if args.tracking_uri:
        overrides.append(f"tracking.tracking_uri={args.tracking_uri}")
    if args.register:
        overrides.append(f"tracking.register_as={args.register}")
    resume = args.resume
    if _is_override(resume):  # `--resume trainer.patience=10`: argparse took the override for the run folder
        overrides.insert(0, resume)
        resume = "latest"
    if resume is not None:
        resume = latest_run_dir(load_run_config(args.config, overrides)) if resume == "latest" else resume
        cfg = resume_config(resume, overrides)
        print(f"resuming {resume}")
        config_file = args.config
    else:
        config_file = args.config or default_config_path()
        cfg = load_run_config(config_file, overrides)
    result = train(cfg, config_file=config_file, resume=resume, after_logging=log_pyfunc_flavour)
    if result.model_dir is None:  # a worker process of a multi-process run
        return 0
    print(f"run folder:   {result.run_dir}")
    if result.run_id:
        print(f"MLflow run:   {result.run_id} at {result.tracking_uri} (see it with: mlflow ui "
              f"--backend-store-uri {result.tracking_uri})")
    if result.registered_version:
        print(f"registered:   models:/{cfg.tracking.register_as}/{result.registered_version}")
    print("test metrics: " + ", ".join(f"{k[5:]}={v:.4f}" for k, v in result.metrics.items()
                                        if k.startswith("test_") and k.endswith("@10") and "_time_" not in k
                                        and not k.startswith(("test_repeat_", "test_explore_")))
          + "; " + seen_label(cfg) + time_context_label(cfg, "; "))
    if "test_repeat_share" in result.metrics:
        print(_repeat_line(result.metrics, "test_"))
    if "test_time_none_ndcg@10" in result.metrics:
        print("by time context: " + ", ".join(
            f"{context} ndcg@10={result.metrics[f'test_time_{context}_ndcg@10']:.4f} "
            f"hr@10={result.metrics[f'test_time_{context}_hr@10']:.4f}" for context in ("none", "target")))
    print(f"saved model:  {result.model_dir}")
    return 0


def add_tune_command(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    tune = commands.add_parser(
        "tune",
        help="search hyperparameters on the validation split (Optuna), each trial an MLflow run; write best.yaml",
        description="Search a run config's hyperparameters with Optuna (TPE, seeded by trainer.seed) on the "
        "validation split: each trial trains CONFIG with its overrides and the values it drew from the search "
        "space, scored by validation NDCG@10; the test split is never read. Bad trials are pruned by their "
        "per-epoch validation NDCG@10 (median pruner). Each trial is an MLflow run nested under one run for the "
        "study. The study lives in --study-dir (Optuna's study.db beside the MLflow store mlflow.db, unless "
        "tracking.tracking_uri or $MLFLOW_TRACKING_URI names another): run the same command again to resume "
        "it. The best config is written to <study-dir>/best.yaml, for `recsys train --config`. The search "
        "space is configs/search/<model>.yaml unless --space FILE, e.g.\n"
        "  model.hidden: {type: categorical, choices: [32, 64, 128]}\n"
        "  model.n_layers: {type: int, low: 1, high: 3}\n"
        "  trainer.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}",
        formatter_class=_listing_formatter,
    )
    tune.add_argument("config", metavar="CONFIG", help="YAML run config to tune (see configs/)")
    tune.add_argument("overrides", nargs="*", metavar="key=value",
                      help="config overrides for every trial, e.g. trainer.threads=1 trainer.max_epochs=50")
    tune.add_argument("--trials", type=_positive, default=None, metavar="N",
                      help="trials the study should hold in all (a resumed study counts those it has)")
    tune.add_argument("--max-minutes", type=_minutes, default=None, metavar="M",
                      help="stop starting trials after M minutes, and cap each trial's training to what is left")
    tune.add_argument("--trial-minutes", type=_minutes, default=None, metavar="M",
                      help="cap each trial's training at M minutes (the search's budget: best.yaml keeps the config's "
                      "own trainer.max_minutes)")
    tune.add_argument("--study-dir", default=None, metavar="DIR",
                      help="the study's folder (default: studies/<config name>); an existing study is resumed")
    tune.add_argument("--space", default=None, metavar="FILE",
                      help="search space YAML (default: configs/search/<model>.yaml of the recsys checkout)")
    tune.add_argument("--pruner", choices=("median", "none"), default="median",
                      help="median: stop a trial whose validation NDCG@10 is below the median of earlier trials at "
                      "the same epoch (after 3 trials and 5 epochs); none: every trial trains to its end")
    tune.set_defaults(handler=run_tune)


def _minutes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of minutes") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value:g} must be more than 0 minutes")
    return value


def run_tune(args: argparse.Namespace) -> int:
    """`recsys tune`: one line per trial while it runs, then the best trial, best.yaml, plots and MLflow."""
    from pathlib import Path

    from recsys.training.tune import tune

    study_dir = args.study_dir or str(Path("studies") / Path(args.config).stem)
    pruner = None
    if args.pruner == "none":
        import optuna

        pruner = optuna.pruners.NopPruner()
    result = tune(args.config, list(args.overrides), study_dir, n_trials=args.trials, max_minutes=args.max_minutes,
                  space_file=args.space, pruner=pruner, trial_minutes=args.trial_minutes,
                  say=lambda line: print(line, flush=True))
    states = ", ".join(f"{n} {state.lower()}" for state, n in result.states.items())
    print(f"study:        {result.study_dir} ({result.trials} trials: {states}; {result.ran} run now)")
    if result.best_config is None:
        print("best:         none yet (no trial completed)")
    else:
        values = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.best_params.items())
        print(f"best:         trial {result.best_trial}, valid ndcg@10 {result.best_value:.4f}: {values}")
        print(f"best config:  {result.best_config} (train it: recsys train --config {result.best_config})")
    for note in result.notes:
        print(f"plots:        {note}")
    if result.plots:
        print(f"plots:        {', '.join(str(p) for p in result.plots)}")
    if result.parent_run_id:
        print(f"MLflow run:   {result.parent_run_id} at {result.tracking_uri} (see it with: mlflow ui "
              f"--backend-store-uri {result.tracking_uri})")
    return 0


def _repeat_line(metrics: dict[str, float], prefix: str) -> str:
    """Metrics @10 over repeat targets (in the user's history) and explore targets (new to the user)."""
    share = metrics[f"{prefix}repeat_share"]
    parts = [f"repeat targets {share:.1%}"]
    for group in ("repeat", "explore"):
        if f"{prefix}{group}_ndcg@10" in metrics:
            parts.append(f"{group} ndcg@10={metrics[f'{prefix}{group}_ndcg@10']:.4f} "
                         f"hr@10={metrics[f'{prefix}{group}_hr@10']:.4f}")
    return "by target:    " + ", ".join(parts)


def _is_override(value: str | None) -> bool:
    """A section.key=value override rather than a run folder (one whose name has '=' in it still exists)."""
    from pathlib import Path

    return value is not None and "=" in value and not Path(value).is_dir()


def log_pyfunc_flavour(tracking_uri: str, run_id: str, model_dir: object) -> str:
    """Log the saved model as an MLflow pyfunc of the run too (what `--register` registers, so that `mlflow
    models serve -m models:/NAME/N` works, as does `-m runs:/<run>/pyfunc`); returns its models:/ URI."""
    from recsys.retrieval.pyfunc import log_pyfunc

    return log_pyfunc(model_dir, tracking_uri, run_id=run_id)  # type: ignore[arg-type]


DEFAULT_CONFIG = "configs/sasrec_ml-latest-small.yaml"


def default_config_path() -> str | None:
    """The default run's config: configs/sasrec_ml-latest-small.yaml of the working folder, else the one of
    the checkout this package runs from (an install from a clone: `recsys train` in any folder is the same
    run); None, the built-in defaults (SASRec on the embedded ml-latest-small, untuned), only without either."""
    from pathlib import Path

    for candidate in (Path(DEFAULT_CONFIG), Path(__file__).resolve().parents[1] / DEFAULT_CONFIG):
        if candidate.is_file():
            return str(candidate)
    return None


def add_evaluate_command(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    evaluate = commands.add_parser(
        "evaluate",
        help="score a saved model on the validation or test split",
        description="Re-create the split a saved model was trained on (from its saved config) and rank the "
        "full catalogue for every user: HR, NDCG and MRR at K in {1, 5, 10, 20, 50} and coverage.",
        formatter_class=_formatter,
    )
    evaluate.add_argument("--model", required=True, metavar="DIR", help="saved model directory")
    evaluate.add_argument("--split", choices=("valid", "test"), default="test", help="which split to score")
    evaluate.add_argument("--include-seen", action="store_const", const=True, default=None,
                          help="keep items of the user's history in the ranking (evaluation.exclude_seen: false); "
                          "default: the model's evaluation.exclude_seen")
    evaluate.add_argument("--time-context", choices=("none", "target"), default=None,
                          help="for a time-aware model (hstu): ask at the last interaction (none) or at the target's "
                          "timestamp (target: information a request has only as its own time); default: the "
                          "model's evaluation.time_context")
    evaluate.add_argument("--data-path", default=None, help="where the raw data are now, if they moved")
    evaluate.add_argument("--batch-size", type=int, default=512, help="users scored at a time")
    evaluate.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    evaluate.set_defaults(handler=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    import json

    from recsys.evaluation.runner import evaluate_saved_model

    result = evaluate_saved_model(args.model, split=args.split,
                                  exclude_history=None if args.include_seen is None else False,
                                  batch_size=args.batch_size, data_path=args.data_path,
                                  time_context=args.time_context)
    if args.format == "json":
        print(json.dumps(result, indent=2))
        return 0
    context = f", {_time_context_words(result['time_context'])}" if "time_context" in result else ""
    print(f"{args.split} split of {args.model} ({int(result['n_users'])} users, full ranking, "
          f"seen items {'excluded' if result['exclude_history'] else 'kept'}{context})")
    ks = sorted({int(k.split("@")[1]) for k in result if "@" in k})
    print(f"{'K':>4}  {'HR':>8}  {'NDCG':>8}  {'MRR':>8}  {'coverage':>8}")
    for k in ks:
        print(f"{k:>4}  {result[f'hr@{k}']:8.4f}  {result[f'ndcg@{k}']:8.4f}  {result[f'mrr@{k}']:8.4f}  "
              f"{result[f'coverage@{k}']:8.4f}")
    if "repeat_share" in result:
        print(_repeat_line(result, ""))
    return 0


def _time_context_words(time_context: str) -> str:
    return ("asked at the target's timestamp (time context: target)" if time_context == "target"
            else "asked at the last interaction (time context: none)")


# --------------------------------------------------------------------------------------------------------
# recsys recommend / serve


def _add_model_source_options(parser: argparse.ArgumentParser) -> None:
    """--model, --index and --tracking-uri: where `recommend` and `serve` load a model from and how they rank."""
    parser.add_argument("--model", required=True, metavar="DIR|URI",
                        help="saved model directory, runs:/<run_id>/<path> or models:/<name>/<version>")
    parser.add_argument("--index", choices=INDEX_KINDS, default="flat",
                        help="FAISS index: flat is exact; hnsw, ivf, ivfpq approximate, for large catalogues")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI for runs:/ and models:/ (default: $MLFLOW_TRACKING_URI, "
                        "else sqlite:///mlflow.db)")


def add_recommend_command(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    recommend = commands.add_parser(
        "recommend",
        help="top-k items for a known user or a list of items, from a saved model",
        description="Recommend the next items for a known user (their saved history) or for any sequence of "
        "item ids (oldest first), from a model directory or an MLflow URI (runs:/<run_id>/model, "
        "models:/<name>/<version>). Items the user has seen are left out unless --include-seen (or the model's "
        "evaluation.exclude_seen is false).",
        formatter_class=_formatter,
    )
    _add_model_source_options(recommend)
    query = recommend.add_mutually_exclusive_group(required=True)
    query.add_argument("--user", metavar="ID", help="a known user's original id")
    query.add_argument("--items", metavar="ID,ID,...", help="comma-separated original item ids, oldest first")
    recommend.add_argument("--timestamps", metavar="T,T,...", default=None,
                           help="with --items: when each item happened (seconds, comma-separated, one per item), "
                           "for models that read time (hstu); others ignore them")
    recommend.add_argument("--at", type=float, metavar="SECONDS", default=None,
                           help="when the recommendation is asked for (Unix seconds), for models that read time; "
                           "default: no time context (asked at the history's last interaction); with --items it "
                           "needs --timestamps")
    recommend.add_argument("-k", type=int, default=10, help="number of items to recommend")
    recommend.add_argument("--format", choices=("table", "json"), default="table",
                           help="a readable table, or JSON for scripts")
    recommend.add_argument("--include-seen", action="store_const", const=False, default=None,
                           dest="exclude_seen", help="allow items of the history in the results (default: as the "
                           "model's evaluation.exclude_seen says, left out unless it was trained for repeats)")
    recommend.add_argument("--on-unknown", choices=("skip", "error"), default="skip",
                           help="item ids the model does not know: skip them (with a warning) or fail")
    recommend.add_argument("--history-store", metavar="PATH", default=None,
                           help="with --user: add the user's live events from this history store (the SQLite "
                           "file of recsys serve --history-store) to their saved history; users only it knows "
                           "work too")
    recommend.set_defaults(handler=run_recommend)


def run_recommend(args: argparse.Namespace) -> int:
    """`recsys recommend`: print the top-k as a table (rank, item id, title, score) or as JSON."""
    import json

    from recsys.errors import ConfigError
    from recsys.retrieval.recommender import Recommender

    if args.history_store is not None and args.user is None:
        raise ConfigError("--history-store goes with --user: it holds users' events, not a list of items")
    rec = Recommender.load(args.model, index=args.index, tracking_uri=args.tracking_uri,
                           history_store=args.history_store)
    skipped: list[object] = []
    if args.user is not None:
        if args.timestamps is not None:
            raise ConfigError("--timestamps go with --items; a known user's come from the saved model")
        recs = rec.recommend(user=args.user, k=args.k, exclude_seen=args.exclude_seen, at=args.at)
    else:
        items = [item.strip() for item in args.items.split(",") if item.strip()]
        times = None if args.timestamps is None else _timestamps_option(args.timestamps, len(items))
        known, skipped = rec.split_known(items)
        if skipped and args.on_unknown == "skip":
            print(f"warning: skipped {len(skipped)} unknown item ids: {', '.join(map(str, skipped))}",
                  file=sys.stderr)
        history = known if known and args.on_unknown == "skip" else items
        if times is not None and history is known:  # the kept items keep their own times
            times = [times[position] for position in rec.known_positions(items)]
        recs = rec.recommend(history=history, k=args.k, exclude_seen=args.exclude_seen,
                             on_unknown=args.on_unknown, timestamps=times, at=args.at)
    if args.format == "json":
        rows = [{"rank": rank, "item_id": r.item_id, "title": r.title, "score": r.score}
                for rank, r in enumerate(recs, start=1)]
        print(json.dumps({"model": str(args.model), "user": args.user, "items": rows, "skipped_items": skipped},
                         indent=2, default=str))
        return 0
    width = max([len(str(r.item_id)) for r in recs] + [7])
    print(f"{'rank':>4}  {'item_id':>{width}}  {'score':>8}  title")
    for rank, r in enumerate(recs, start=1):
        title = r.title if r.title is not None else "-"
        print(f"{rank:>4}  {str(r.item_id):>{width}}  {r.score:8.4f}  {_shortened(title, TITLE_WIDTH)}")
    return 0


def _timestamps_option(text: str, n_items: int) -> list[float]:
    """--timestamps T,T,...: one number of seconds per --items entry, or a one-line error."""
    from recsys.errors import ConfigError

    parts = [part.strip() for part in text.split(",") if part.strip()]
    try:
        times = [float(part) for part in parts]
    except ValueError:
        bad = next(part for part in parts if not _is_number(part))
        raise ConfigError(f"--timestamps: {bad!r} is not a number of seconds") from None
    if len(times) != n_items:
        raise ConfigError(f"--timestamps: {len(times)} timestamps for {n_items} items; give one per item")
    return times


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


TITLE_WIDTH = 70  # characters of a title in `recsys recommend`'s table; the JSON output keeps it whole


def _shortened(text: str, width: int) -> str:
    """text cut to `width` characters, the last one an ellipsis when anything was cut."""
    return text if len(text) <= width else text[: width - 1] + "…"


def add_serve_command(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    serve = commands.add_parser(
        "serve",
        help="serve a saved model over HTTP (POST /recommend, /recommend/batch, /events; GET /health)",
        description="Serve recommendations from a saved model over HTTP with FastAPI and uvicorn. Endpoints: "
        "POST /recommend, POST /recommend/batch, POST /events (with --history-store), GET /health, "
        "GET /items/{item_id}; the OpenAPI description "
        "is at /openapi.json and interactive docs at /docs.",
        formatter_class=_formatter,
    )
    _add_model_source_options(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all interfaces)")
    serve.add_argument("--port", type=_port, default=8000, help="port to listen on (1-65535)")
    serve.add_argument("--precompute-users", action="store_true",
                       help="encode every known user at start-up: requests by user_id then only search the index")
    serve.add_argument("--compile", action="store_true",
                       help="compile the model's encoder with torch.compile at start-up (5-25 s once, needs a C++ "
                       "compiler; falls back with a warning): faster encoding of histories on a CPU")
    defaults = _batching_defaults()
    serve.add_argument("--max-batch", type=_positive, default=defaults.max_batch, metavar="N",
                       help="most concurrent queries encoded and searched as one batch")
    serve.add_argument("--batch-wait-ms", type=_wait_ms, default=defaults.max_wait_ms, metavar="MS",
                       help="longest a query waits for others to join its batch (0: only those already queued)")
    serve.add_argument("--workers", type=_positive, default=defaults.workers, metavar="N",
                       help="threads running batches through the model")
    serve.add_argument("--threads", type=_positive, default=defaults.threads, metavar="N",
                       help="torch intra-op threads per worker (1: requests in parallel are the parallelism)")
    serve.add_argument("--processes", type=_positive, default=1, metavar="N",
                       help="server processes on the one port, each with its own copy of the model (2 on 2 "
                       "cores: 1.6x the requests/s of 1 by user_id); they share --history-store")
    serve.add_argument("--access-log", action="store_true",
                       help="log a line per request (off by default: it costs a tenth of each request's time)")
    history = _history_defaults()
    serve.add_argument("--history-store", metavar="PATH", default=None,
                       help="keep live histories in this SQLite file (created if missing): POST /events appends "
                       "to a user's history, durably, and the next /recommend for them reads it")
    serve.add_argument("--history-max-per-user", type=_positive, default=history.max_per_user, metavar="N",
                       help="newest events kept per user (at least the model's max_len)")
    serve.add_argument("--history-max-events", type=_positive, default=history.max_events, metavar="N",
                       help="most events kept in the store; beyond it the oldest are deleted")
    serve.set_defaults(handler=run_serve)


def _batching_defaults():  # type: ignore[no-untyped-def]
    from recsys.serving.batching import BatchingConfig  # light: dataclasses only until a batch runs

    return BatchingConfig()


def _history_defaults():  # type: ignore[no-untyped-def]
    from recsys.history_store import HistoryStoreConfig  # light: sqlite3 and dataclasses

    return HistoryStoreConfig()


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _wait_ms(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of milliseconds") from None
    if not 0 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"{value:g} ms is not between 0 and 1000")
    return value


def _port(text: str) -> int:
    """A TCP port number, checked here: out of range, uvicorn's socket call fails with an OverflowError."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (1-65535)")
    return port


def run_serve(args: argparse.Namespace) -> int:
    """`recsys serve`: load the model, then serve it until interrupted."""
    from recsys.serving.http import serve

    from recsys.history_store import HistoryStoreConfig
    from recsys.serving.batching import BatchingConfig

    batching = BatchingConfig(max_batch=args.max_batch, max_wait_ms=args.batch_wait_ms, workers=args.workers,
                              threads=args.threads)
    history = HistoryStoreConfig(max_per_user=args.history_max_per_user, max_events=args.history_max_events)
    serve(args.model, host=args.host, port=args.port, index=args.index, tracking_uri=args.tracking_uri,
          precompute_users=args.precompute_users, compile=args.compile, batching=batching,
          history_store=args.history_store, history=history, access_log=args.access_log,
          processes=args.processes)
    return 0


# --------------------------------------------------------------------------------------------------------
# Config keys in help: `recsys train --help` (data, trainer, evaluation, tracking) and `recsys config show` (all)


def _train_keys_epilog() -> str:
    """The config keys `recsys train` takes, from the config classes: model keys need the model registry,
    which imports torch, so they are left to `recsys config show` (help must answer at once)."""
    from recsys.config import PLAIN_SECTIONS

    lines = ["Config keys, each settable as section.key=value (the defaults shown are the built-in ones; a config "
             "file sets its own). The model.* keys depend on model.name: `recsys config show [MODEL]` lists them "
             "(it loads the models, so it takes a few seconds)."]
    for section, cls in PLAIN_SECTIONS:
        lines += ["", f"{section}: {cls.__doc__}", *_key_lines(cls, section)]
    return "\n".join(lines)


def _key_lines(cls: type, section: str, values: dict[str, object] | None = None) -> list[str]:
    """`  section.key = default  (type)` and the key's docstring below it, wrapped; with `values` (a loaded
    config, flattened), the value is shown and the default beside it where they differ."""
    import shutil
    import textwrap

    from recsys.config import describe_keys, yaml_text

    width = min(shutil.get_terminal_size().columns, 110) - 2
    lines = []
    for key in describe_keys(cls, f"{section}."):
        if not key.default:  # a sub-config: its keys follow
            lines.append(f"  {key.key}  ({key.type})")
        else:
            value = yaml_text(values[key.key]) if values is not None and key.key in values else key.default
            default = f"; default: {key.default}" if value != key.default else ""
            lines.append(f"  {key.key} = {value}  ({key.type}{default})")
        lines += textwrap.wrap(key.doc, width, initial_indent="      ", subsequent_indent="      ")
    return lines


def add_config_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    actions = _command_group(commands, "config", "list the config keys: type, default, what each does")
    show = actions.add_parser(
        "show",
        help="every config key (data, trainer, evaluation, tracking and a model's) with its type, default and description",
        description="List every config key a run takes, as section.key = default (type) and what it does: "
        "data, trainer, evaluation and tracking keys, then the model.* keys of each MODEL (default: every model). With "
        "--config FILE (and key=value overrides), the values of that run config instead, its model's keys, and "
        "the default beside each value that differs. It loads the models (torch), so it takes a few seconds.",
        formatter_class=_formatter,
    )
    show.add_argument("items", nargs="*", metavar="MODEL|key=value",
                      help="models whose keys to list (default: all), or overrides of --config's values")
    show.add_argument("--config", default=None, metavar="FILE", help="a run config whose values to show")
    show.set_defaults(handler=run_config_show)
    suggest = actions.add_parser(
        "suggest",
        help="write a run config for a dataset (your own log too), with values chosen from its statistics",
        description="Prepare the dataset NAME (as `recsys data prepare` does, same options), read its statistics "
        "and write a run config for it: the values that depend on the data (whether the history stays "
        "rankable, max_len, the loss) chosen by the rules of recsys/suggest.py, each with the statistic it read "
        "as a comment, and the settings that beat RecTools' default on ml-100k for the rest. Then: recsys train "
        "--config FILE. An existing FILE is never overwritten.",
        formatter_class=_formatter,
    )
    _add_data_options(suggest, statistics=False, split=True)
    suggest.add_argument("--model", default="sasrec", help="model.name of the config (its keys only are written)")
    suggest.add_argument("-o", "--output", required=True, metavar="FILE", help="where to write the YAML config")
    suggest.set_defaults(handler=run_config_suggest)


def run_config_show(args: argparse.Namespace) -> int:
    """`recsys config show`: the keys of every section (and of the chosen models) with defaults or values."""
    from recsys.config import PLAIN_SECTIONS, flatten
    from recsys.errors import ConfigError
    from recsys.models import MODELS
    from recsys.run_config import load_run_config

    models = [item for item in args.items if "=" not in item]
    overrides = [item for item in args.items if "=" in item]
    values = None
    if args.config is not None or overrides:
        if models:
            raise ConfigError(f"config show: give MODEL ({models[0]}) or a config (--config, key=value), not both")
        cfg = load_run_config(args.config, overrides)
        values, models = flatten(cfg.to_dict()), [cfg.model_name]
    unknown = [name for name in models if name not in MODELS]
    if unknown:
        raise ConfigError(f"config show: unknown model {unknown[0]!r} (known: {', '.join(sorted(MODELS))})")
    lines: list[str] = []
    for section, cls in PLAIN_SECTIONS:
        lines += [f"{section}: {cls.__doc__}", *_key_lines(cls, section, values), ""]
    for name in models or sorted(MODELS):
        _, config_cls = MODELS[name]
        lines += [f"model (model.name: {name}): {' '.join((config_cls.__doc__ or '').split())}",
                  *_key_lines(config_cls, "model", values), ""]
    print("\n".join(lines).rstrip())
    return 0


def run_config_suggest(args: argparse.Namespace) -> int:
    """`recsys config suggest`: a run config for the dataset, its data-dependent values from its statistics."""
    import os
    import shlex
    from pathlib import Path

    import yaml

    from recsys.config import DataConfig, to_dict
    from recsys.data.prepare import dataset_stats, prepare_dataset
    from recsys.data import schema
    from recsys.durable import write_text
    from recsys.errors import ConfigError
    from recsys.models import MODELS
    from recsys.run_config import run_config_from_dict
    from recsys.suggest import config_yaml, history_repeat_share

    output = Path(args.output)
    if output.exists():
        raise ConfigError(f"{output}: already exists; give another --output (nothing was written)")
    if args.model not in MODELS:
        raise ConfigError(f"config suggest: unknown model {args.model!r} (known: {', '.join(sorted(MODELS))})")
    cfg = _data_config(args)
    ds = prepare_dataset(cfg, progress=sys.stderr.isatty())
    stats = dataset_stats(ds)
    defaults = to_dict(DataConfig(name=cfg.name))
    data = {key: value for key, value in to_dict(cfg).items()
            if key in ("name", "preset", "split") or value != defaults.get(key)}
    for key in ("path", "interactions_file", "items_file"):  # the config works from any folder
        if data.get(key):
            data[key] = os.path.abspath(data[key])
    _, model_cls = MODELS[args.model]
    given = [f"--{key.replace('_', '-')} {shlex.quote(str(getattr(args, f'data.{key}')))}"
             for key in DataConfig.model_fields if getattr(args, f"data.{key}", None) is not None]
    command = " ".join(["recsys config suggest", shlex.quote(args.name),
                        *([f"--from {shlex.quote(args.source)}"] if args.source else []), *given,
                        *([f"--model {args.model}"] if args.model != "sasrec" else []), f"-o {shlex.quote(str(output))}"])
    text = config_yaml(data, args.model, set(model_cls.model_fields), stats,
                       history_repeat_share(ds.sequences[schema.ITEMS]), command)
    run_config_from_dict(yaml.safe_load(text), where=str(output))  # what it wrote loads as a run config
    write_text(output, text)
    print(text, end="")
    print(f"wrote {output}; train with: recsys train --config {output}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------------------------------------
# recsys index ...


def add_index_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    actions = _command_group(commands, "index", "change a saved model's catalogue and FAISS index")
    add = actions.add_parser(
        "add-items",
        help="add new items, from their text, to a text model's catalogue and index (no retraining)",
        description="Encode the text of new items with a text model (recformer, recformer_full) and write a NEW model directory "
        "whose catalogue and FAISS index hold them too; the original directory is never changed. ITEMS is a "
        "CSV or Parquet file with the item id column and the model's text columns (MovieLens: title, year, "
        "genres, with genres written Genre|Genre). Id-based models refuse: they cannot score unseen ids.",
        formatter_class=_formatter,
    )
    add.add_argument("--model", required=True, metavar="DIR", help="saved model directory of a text model")
    add.add_argument("--items", required=True, metavar="FILE", help="CSV or Parquet file of the new items")
    add.add_argument("--item-column", default="item_id", help="column of item ids in FILE")
    _add_output_options(add, "new-items")
    add.set_defaults(handler=run_add_items)
    prior = actions.add_parser(
        "set-prior",
        help="add a catalogue prior, counted from an interaction log, to a model's scores (no retraining)",
        description="Count each catalogue item's interactions in FILE and write a NEW model directory whose "
        "scores add WEIGHT * log(the item's share of those interactions, add-one smoothed); the original "
        "directory is never changed, an earlier prior is replaced. This is how a model trained with "
        "trainer.popularity_correction=true (which learnt its scores on top of its training catalogue's "
        "popularity) is given the popularity of the catalogue it now serves, e.g. after pointing a text model "
        "at another catalogue. Ids not in the catalogue are skipped and reported.",
        formatter_class=_formatter,
    )
    prior.add_argument("--model", required=True, metavar="DIR", help="saved model directory (any model)")
    prior.add_argument("--interactions", required=True, metavar="FILE",
                       help="CSV or Parquet interaction log, one row per interaction")
    prior.add_argument("--item-column", default="item_id", help="column of item ids in FILE (MovieLens CSV: movieId)")
    prior.add_argument("--weight", type=float, default=1.0,
                       help="scale of the log prior; 1 is the scale popularity_correction trains at")
    _add_output_options(prior, "prior")
    prior.set_defaults(handler=run_set_prior)
    catalogue = actions.add_parser(
        "set-catalogue",
        help="point a text model at another dataset's catalogue and users (cross-catalogue, no retraining)",
        description="Prepare the dataset NAME (as `recsys data prepare` does, same options), encode every one of "
        "its items from its text with the text model (recformer, recformer_full) in --model, and write a NEW model directory whose "
        "catalogue, FAISS index, users and histories are the dataset's, so `recsys recommend --user` works for its "
        "users; nothing is trained and the original directory is never changed. --prior also adds the dataset's "
        "own popularity as a catalogue prior (see `recsys index set-prior`), which a model trained with "
        "trainer.popularity_correction=true expects. Id-based models refuse.",
        formatter_class=_formatter,
    )
    catalogue.add_argument("--model", required=True, metavar="DIR", help="saved model directory of a text model")
    _add_data_options(catalogue, statistics=False, split=True)
    catalogue.add_argument("--prior", action="store_true",
                           help="add the dataset's interaction counts as a catalogue prior")
    catalogue.add_argument("--weight", type=float, default=1.0, help="scale of the log prior (with --prior)")
    _add_output_options(catalogue, "<dataset>")
    catalogue.set_defaults(handler=run_set_catalogue)


def _add_output_options(parser: argparse.ArgumentParser, suffix: str) -> None:
    """--out and --index of the commands that write a new model directory (never in place)."""
    parser.add_argument("--out", default=None, metavar="DIR",
                        help=f"where to write the new model directory (default: <model>-{suffix}, -2, ...)")
    parser.add_argument("--index", choices=INDEX_KINDS, default="flat", help="FAISS index to build")


def run_add_items(args: argparse.Namespace) -> int:
    """`recsys index add-items`: print the new model directory and what it holds."""
    from recsys.retrieval.catalogue import add_items

    result = add_items(args.model, args.items, out=args.out, item_column=args.item_column, index=args.index)
    shown = ", ".join(map(str, result.item_ids[:10])) + (", ..." if len(result.item_ids) > 10 else "")
    print(f"added {len(result.item_ids)} items ({shown}); catalogue now {result.n_items} items")
    print(f"saved model:  {result.model_dir}")
    return 0


def run_set_prior(args: argparse.Namespace) -> int:
    """`recsys index set-prior`: print the new model directory and what was counted."""
    from recsys.retrieval.catalogue import set_prior

    result = set_prior(args.model, args.interactions, out=args.out, item_column=args.item_column,
                       weight=args.weight, index=args.index)
    print(f"counted {result.counted} interactions over {result.items_counted} catalogue items"
          + (f"; skipped {result.unknown} with ids not in the catalogue" if result.unknown else ""))
    print(f"saved model:  {result.model_dir}")
    return 0


def run_set_catalogue(args: argparse.Namespace) -> int:
    """`recsys index set-catalogue`: print the new model directory and what it holds."""
    from recsys.retrieval.catalogue import set_catalogue

    result = set_catalogue(args.model, _data_config(args), out=args.out, prior=args.prior, weight=args.weight,
                           index=args.index)
    print(f"catalogue: {result.n_items} items of {args.name}, encoded from {', '.join(result.text_columns)}; "
          f"{result.n_users} users" + ("; with the dataset's popularity as prior" if args.prior else ""))
    print(f"saved model:  {result.model_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
