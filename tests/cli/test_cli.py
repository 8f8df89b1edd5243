"""The command line: help for every command, fast start-up, one-line errors."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from recsys.cli import build_parser, main

CONFIG = Path(__file__).parents[2] / "configs" / "sasrec_ml-latest-small.yaml"


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recsys.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


@pytest.mark.parametrize("command", [["--help"], ["train", "--help"], ["data", "prepare", "--help"]])
def test_help_imports_no_heavy_library(command: list[str]) -> None:
    # What keeps help well under a second: the config keys it lists come from recsys.config (pydantic), not
    # from the models (torch).
    code = ("import sys; from recsys.cli import main\n"
            f"try:\n    main({command!r})\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'lightning', 'mlflow', 'polars', 'faiss') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in done.stdout, done.stdout + done.stderr


def _key_line(text: str, key: str) -> str:
    (line,) = [line for line in text.splitlines() if line.startswith(f"  {key} ")]
    return line


def test_train_help_lists_every_data_trainer_and_tracking_key_with_its_default(
        capsys: pytest.CaptureFixture[str]) -> None:
    from recsys.config import DataConfig, TrackingConfig, TrainerConfig, describe_keys

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for section, cls in (("data", DataConfig), ("trainer", TrainerConfig), ("tracking", TrackingConfig)):
        for key in describe_keys(cls, f"{section}."):
            line = _key_line(text, key.key)
            if key.default:
                assert line.startswith(f"  {key.key} = {key.default}  ({key.type})"), key
            else:  # a sub-config (trainer.contrastive): its own line, its keys after it
                assert line.startswith(f"  {key.key}  ({key.type})"), key
            assert " ".join(key.doc.split()[:6]) in " ".join(text.split()), key  # its docstring follows
    assert "  trainer.max_epochs = 200  (int >= 1)" in text and "  trainer.train_windows = last  ('last' | 'all')" in text
    assert "  trainer.contrastive.method = none  ('none' | 'cl4srec' | 'mclrec')" in text
    assert "recsys config show" in text  # where the model keys are


def test_config_show_lists_every_key_of_every_model(capsys: pytest.CaptureFixture[str]) -> None:
    from recsys.config import describe_keys
    from recsys.models import MODELS

    assert main(["config", "show"]) == 0
    text = capsys.readouterr().out
    sections = text.split("\nmodel (model.name: ")
    for name, (_, config_cls) in MODELS.items():
        (part,) = [p for p in sections if p.startswith(f"{name}):")]
        for key in describe_keys(config_cls, "model."):
            line = _key_line(part, key.key)
            assert line.startswith(f"  {key.key} = {key.default}  (") if key.default else key.type in line, key
    assert "  model.loss.name = ce  ('ce' | 'sampled_ce' | 'bce' | 'gbce')" in text  # sasrec, gru4rec
    assert "  model.loss.name = ce  ('ce' | 'sampled_ce')" in text  # bert4rec, recformer
    assert "  data.name = ml-latest-small  (str)" in text

    # a config's own values, and the default beside those that differ
    assert main(["config", "show", "--config", str(CONFIG.parent / "bert4rec_ml-1m-papers.yaml"),
                 "model.loss.n_negatives=9"]) == 0
    text = capsys.readouterr().out
    assert "  model.loss.n_negatives = 9  (int >= 1; default: 256)" in text and "(model.name: sasrec)" not in text
    assert main(["config", "show", "sasrek"]) == 2
    assert capsys.readouterr().err.startswith("error: config show: unknown model 'sasrek' (known: actr, bert4rec, ")


def test_data_options_are_the_data_config_keys() -> None:
    from recsys.cli import SPLIT_KEYS
    from recsys.config import DataConfig

    prepare = _subparser(build_parser(), ["data", "prepare"])
    options = {a.dest: a for a in prepare._actions}
    for key, field in DataConfig.model_fields.items():
        if key in ("name", "path", "interactions_file", *SPLIT_KEYS):
            continue
        assert options[f"data.{key}"].help.startswith((field.description or "").removeprefix("custom: ")[:30]), key
    args = build_parser().parse_args(["data", "prepare", "custom", "--from", "log.csv", "--min-user", "2",
                                      "--min-rating", "4", "--text-columns", "title", "genres"])
    from recsys.cli import _data_config

    cfg = _data_config(args)  # not given: DataConfig's own defaults
    assert (cfg.interactions_file, cfg.path, cfg.min_user_interactions, cfg.min_rating) == ("log.csv", None, 2, 4.0)
    assert cfg.text_columns == ("title", "genres") and cfg.separator == "," and cfg.core == "single"


def test_the_index_kinds_offered_are_the_ones_retrieval_builds() -> None:
    from recsys.cli import INDEX_KINDS
    from recsys.retrieval.index import KINDS

    assert INDEX_KINDS == KINDS
    for command in (["recommend"], ["serve"], ["index", "add-items"]):
        index = next(a for a in _subparser(build_parser(), command)._actions if "--index" in a.option_strings)
        assert tuple(index.choices) == KINDS, command


def _subparser(parser: argparse.ArgumentParser, path: list[str]) -> argparse.ArgumentParser:
    for name in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return parser


def test_every_command_and_option_has_help() -> None:
    parser = build_parser()
    seen = []

    def walk(p) -> None:
        for action in p._actions:
            if action.dest == "help":
                continue
            if hasattr(action, "choices") and isinstance(action.choices, dict):  # sub-commands
                for name, sub in action.choices.items():
                    seen.append(name)
                    walk(sub)
                continue
            assert action.help, f"{p.prog}: option {action.option_strings or action.dest} has no help"

    walk(parser)
    assert {"data", "train", "evaluate"} <= set(seen)


def test_help_states_each_default_once_and_only_real_ones() -> None:
    """Defaults are shown where they say something: not "None" for a required option or one without a
    default, not "False" for an on/off flag, and not a second time where the help text already names it."""

    def parsers(p: argparse.ArgumentParser):
        yield p
        for action in p._actions:
            if isinstance(action.choices, dict):
                for sub in action.choices.values():
                    yield from parsers(sub)

    texts = {p.prog: " ".join(p.format_help().split()) for p in parsers(build_parser())}
    for prog, text in texts.items():
        assert "(default: None)" not in text and "(default: False)" not in text, prog
    serve = texts["recsys serve"]
    assert serve.count("MLFLOW_TRACKING_URI") == 1 and "(default: 8000)" in serve
    assert "--tracking-uri TRACKING_URI MLflow tracking URI for runs:/ and models:/ (default: " \
           "$MLFLOW_TRACKING_URI, else sqlite:///mlflow.db) --host" in serve


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.hiden=32", "model.hiden: unknown key"),
        ("trainer.max_epochs=two", "trainer.max_epochs: expected an integer, got 'two'"),
        ("model.loss=mse", "model.loss: 'mse' is not one of 'ce', 'sampled_ce', 'bce', 'gbce'"),
        ("model.name=gpt", "model.name: unknown model 'gpt'"),
        ("modle.hidden=3", "modle: unknown section"),
        # the key is named in full (the model's own check said "model: dropout must be in [0, 1), got 1.5")
        ("model.dropout=1.5", "model.dropout: must be in [0, 1), got 1.5"),
        ("model.n_heads=7", "model: hidden (64) must be divisible by n_heads (7)"),
        ("model.loss.name=mse", "model.loss.name: 'mse' is not one of 'ce', 'sampled_ce', 'bce', 'gbce'"),
        ("model.loss.n_negatives=0", "model.loss.n_negatives: must be at least 1, got 0"),
        ("model.n_negatives=0", "model.loss.n_negatives: must be at least 1, got 0"),  # the flat key of 0.1
        ("model.loss.gbce_t=2", "model.loss.gbce_t: must be in [0, 1], got 2.0"),
        ("model.loss.temperature=2", "model.loss.temperature: unknown key (known: chunk_mb, gbce_t, "
                                     "history_negatives, logq_correction, n_negatives, name, negatives)"),
        ("model.loss=5", "model.loss: expected a name or a mapping of keys, got 5"),
        # once silently "all"
        ("trainer.train_windows=every", "trainer.train_windows: 'every' is not one of 'last', 'all'"),
        ("trainer.betas=[0.9]", "trainer.betas: expected a list of 2 values, got 1"),
        ("trainer.cooldown_epochs=5", "trainer.cooldown_epochs: needs lr_decay: none (a cool-down is its own "
                                      "decay), got lr_decay: linear"),  # the default config decays linearly
        ("trainer.max_epochs", "expected key=value"),
        # Lightning reads -1 as "no limit" and fails on -5 with a traceback; 0 would be a batch-less loader
        ("trainer.max_epochs=-1", "trainer.max_epochs: must be at least 1, got -1"),
        ("trainer.max_epochs=-5", "trainer.max_epochs: must be at least 1, got -5"),
        ("trainer.batch_size=0", "trainer.batch_size: must be at least 1, got 0"),
        ("trainer.eval_batch_size=-2", "trainer.eval_batch_size: must be at least 1, got -2"),
        ("trainer.lr=-0.001", "trainer.lr: must be at least 0, got -0.001"),
        ("trainer.betas=[0.9,1.0]", "trainer.betas[1]: must be in [0, 1), got 1.0"),
        ("trainer.accelerator=gpuu", "trainer.accelerator: 'gpuu' is not one of 'auto', 'cpu', 'gpu'"),
        ("trainer.devices=0", "trainer.devices: must be at least 1, got 0"),
        ("trainer.devices=all", "trainer.devices: expected int or one of 'auto', got 'all'"),
        ("trainer.strategy=dp", "trainer.strategy: 'dp' is not one of 'auto', 'ddp'"),
        ("trainer.precision=fp16", "trainer.precision: 'fp16' is not one of 'auto', '32-true'"),
        ("trainer.threads=0", "trainer.threads: must be at least 1, got 0"),
        ("trainer.num_workers=-1", "trainer.num_workers: must be at least 0, got -1"),
        ("trainer.limit_train_batches=0", "trainer.limit_train_batches: must be in (0, 1], got 0.0"),
        ("trainer.seed=-1", "trainer.seed: must be in [0, 4294967295], got -1"),
        ("data.valid_quantile=1.5", "data.valid_quantile: must be in (0, 1], got 1.5"),
        ("data.min_user_interactions=-1", "data.min_user_interactions: must be at least 0, got -1"),
    ],
)
def test_bad_overrides_stop_with_one_line_naming_the_key(override: str, message: str, tmp_path: Path) -> None:
    done = run_cli("train", "--config", str(CONFIG), override, cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and message in lines[0]
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_bad_yaml_names_the_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  hidden: 32\n   loss: ce\n")
    done = run_cli("train", "--config", str(bad), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: {bad}:") and "line 3" in done.stderr


@pytest.mark.parametrize(("content", "message"), [
    (bytes(range(256)) * 4, "not a YAML text file (byte 128 is not UTF-8 text)"),
    (b"model: [1, 2]\n", "model: expected a mapping of keys, got list [1, 2]"),
    (b"trainer: 5\n", "trainer: expected a mapping of keys, got int 5"),
    (b"data:\n  name: ml-1m\x00\n", "line 2: invalid YAML: special characters are not allowed"),
])
def test_a_config_that_is_not_a_yaml_mapping_is_one_line(content: bytes, message: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(content)
    done = run_cli("train", "--config", str(bad), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: {bad}: {message}"]
    assert not (tmp_path / "runs").exists()


def test_missing_config_file(tmp_path: Path) -> None:
    assert main(["train", "--config", str(tmp_path / "nope.yaml")]) == 2


def test_evaluate_a_missing_model_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--model", str(tmp_path / "nothing")]) == 2
    assert "no such model directory" in capsys.readouterr().err


def test_an_os_error_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("x")
    # The run folder would go under a regular file: the system refuses, the user gets one line.
    done = run_cli("train", "--config", str(CONFIG), f"tracking.output_dir={blocked / 'runs'}",
                   "tracking.enabled=false", "trainer.progress_bar=false", cwd=tmp_path)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(blocked) in last and "Not a directory" in last, done.stderr


def test_numbers_in_exponent_notation_are_numbers_in_overrides_and_files(tmp_path: Path) -> None:
    from recsys.run_config import load_run_config

    config = tmp_path / "lr.yaml"
    config.write_text("model:\n  name: sasrec\ntrainer:\n  lr: 3e-4\n")
    assert load_run_config(config, []).trainer.lr == 3e-4  # PyYAML alone reads 3e-4 as a string
    assert load_run_config(CONFIG, ["trainer.lr=5e-5", "trainer.weight_decay=1E-2"]).trainer.lr == 5e-5
    assert load_run_config(CONFIG, ["trainer.weight_decay=1E-2"]).trainer.weight_decay == 0.01
    done = run_cli("train", "--config", str(CONFIG), "trainer.lr=5e-5x", cwd=tmp_path)
    assert done.returncode == 2 and "trainer.lr: expected a number, got '5e-5x'" in done.stderr


def test_the_default_run_is_the_same_from_any_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from recsys.cli import default_config_path

    # In a fresh folder `recsys train` used to fall back to the dataclasses' untuned defaults (200 epochs).
    monkeypatch.chdir(tmp_path)
    assert default_config_path() == str(CONFIG.resolve())
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / CONFIG.name).write_text("trainer:\n  max_epochs: 3\n")
    assert default_config_path() == str(Path("configs") / CONFIG.name)  # the working folder's own wins


def test_resume_reads_the_run_config_as_any_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "runs" / "sasrec-1"
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text("{}")
    config = run_dir / "config.yaml"
    config.write_text("model:\n  hidden: 32\n   loss: ce\n")  # broken indentation on line 3
    assert main(["train", "--resume", str(run_dir)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {config}: line 3: invalid YAML: mapping values are not allowed here"]
    config.write_text("model:\n  hiden: 32\n")
    assert main(["train", "--resume", str(run_dir), "trainer.max_epochs=3"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {config}: model.hiden: unknown key (known: ")
    assert not (run_dir / "checkpoints").exists()  # nothing started
