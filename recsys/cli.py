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
        "model. Any config value can be overridden as section.key=value, e.g. trainer.max_epochs=5.",
        formatter_class=_formatter,
    )
    train.add_argument("--config", default="configs/sasrec_ml-latest-small.yaml", help="YAML config file")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. model.n_layers=2")
    train.set_defaults(handler=lambda _args: 0)


def add_evaluate_command(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    evaluate = commands.add_parser(
        "evaluate",
        help="score a saved model on the validation or test split",
        formatter_class=_formatter,
    )
    evaluate.add_argument("--model", required=True, help="saved model directory")
    evaluate.set_defaults(handler=lambda _args: 0)


if __name__ == "__main__":
    raise SystemExit(main())
