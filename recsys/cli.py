"""The `recsys` command line. Parsing lives here and only here.

Start-up must stay fast (`recsys --help` well under a second): this module imports nothing heavy at the top;
each command imports torch, Lightning or MLflow inside its handler, only when it runs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from recsys.errors import RecsysError

Handler = Callable[[argparse.Namespace], int]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0
    try:
        return handler(args)
    except RecsysError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


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
    add_evaluate_command(commands)
    return parser


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.ArgumentDefaultsHelpFormatter(prog, max_help_position=36)


# --------------------------------------------------------------------------------------------------------
# recsys data ...


def add_data_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    data = commands.add_parser("data", help="prepare datasets and show their statistics")
    data.set_defaults(handler=lambda _args: (data.print_help(), 0)[1])
    # Filled in by the data layer work: `data prepare`, `data stats`.


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
        formatter_class=_formatter,
    )
    train.add_argument("--config", default=None,
                       help="YAML run config (default: configs/sasrec_ml-latest-small.yaml if present, else the built-in "
                       "defaults: SASRec on the embedded ml-latest-small)")
    train.add_argument("--resume", nargs="?", const="latest", default=None, metavar="RUN_DIR",
                       help="continue a run from its last checkpoint (no value: the newest run under "
                       "tracking.output_dir); the same MLflow run goes on")
    train.add_argument("--tracking-uri", default=None,
                       help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)")
    train.add_argument("--register", default=None, metavar="NAME",
                       help="register the saved model in the MLflow model registry under NAME")
    train.add_argument("overrides", nargs="*", metavar="key=value",
                       help="config overrides, e.g. trainer.max_epochs=5 data.preset=papers")
    train.set_defaults(handler=run_train)


def run_train(args: argparse.Namespace) -> int:
    from recsys.training.run_config import load_run_config
    from recsys.training.train import latest_run_dir, resume_config, train

    overrides = list(args.overrides)
    if args.tracking_uri:
        overrides.append(f"tracking.tracking_uri={args.tracking_uri}")
    if args.register:
        overrides.append(f"tracking.register_as={args.register}")
    resume = None
    if args.resume is not None:
        resume = latest_run_dir(load_run_config(args.config, overrides)) if args.resume == "latest" else args.resume
        cfg = resume_config(resume, overrides)
        print(f"resuming {resume}")
    else:
        cfg = load_run_config(args.config or default_config_path(), overrides)
    result = train(cfg, config_file=args.config, resume=resume)
    if result.model_dir is None:  # a worker process of a multi-process run
        return 0
    print(f"run folder:   {result.run_dir}")
    if result.run_id:
        print(f"MLflow run:   {result.run_id} at {result.tracking_uri} (see it with: mlflow ui "
              f"--backend-store-uri {result.tracking_uri})")
    if result.registered_version:
        print(f"registered:   models:/{cfg.tracking.register_as}/{result.registered_version}")
    print("test metrics: " + ", ".join(f"{k[5:]}={v:.4f}" for k, v in result.metrics.items()
                                        if k.startswith("test_") and k.endswith("@10")))
    print(f"saved model:  {result.model_dir}")
    return 0


def default_config_path() -> str | None:
    """configs/sasrec_ml-latest-small.yaml when run from a checkout; elsewhere None, i.e. the built-in
    defaults, which are the same run (SASRec on the embedded ml-latest-small)."""
    from pathlib import Path

    local = Path("configs/sasrec_ml-latest-small.yaml")
    return str(local) if local.is_file() else None


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
    evaluate.add_argument("--include-seen", action="store_true",
                          help="keep items of the user's history in the ranking (default: excluded)")
    evaluate.add_argument("--data-path", default=None, help="where the raw data are now, if they moved")
    evaluate.add_argument("--batch-size", type=int, default=512, help="users scored at a time")
    evaluate.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    evaluate.set_defaults(handler=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    import json

    from recsys.evaluation.runner import evaluate_saved_model

    result = evaluate_saved_model(args.model, split=args.split, exclude_history=not args.include_seen,
                                  batch_size=args.batch_size, data_path=args.data_path)
    if args.format == "json":
        print(json.dumps(result, indent=2))
        return 0
    print(f"{args.split} split of {args.model} ({int(result['n_users'])} users, full ranking, "
          f"seen items {'kept' if args.include_seen else 'excluded'})")
    ks = sorted({int(k.split("@")[1]) for k in result if "@" in k})
    print(f"{'K':>4}  {'HR':>8}  {'NDCG':>8}  {'MRR':>8}  {'coverage':>8}")
    for k in ks:
        print(f"{k:>4}  {result[f'hr@{k}']:8.4f}  {result[f'ndcg@{k}']:8.4f}  {result[f'mrr@{k}']:8.4f}  "
              f"{result[f'coverage@{k}']:8.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
