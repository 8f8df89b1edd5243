"""A user's own log that would mislead or break a run: duplicated events, an empty file, a separator typed the
shell's way, users too short to split. Each is a count and a warning, or one line with exit 2 and nothing left."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from mlflow.tracking import MlflowClient

from recsys.cli import main
from recsys.config import DataConfig
from recsys.data.prepare import dataset_stats, prepare_dataset
from recsys.data.splits import make_split, not_evaluated
from recsys.errors import ConfigError, DataError

ROWS = [(user, item, 1000 * user + 10 * t) for user in range(1, 9) for t, item in enumerate([10, 20, 30, 40, 50])]


def write_log(path: Path, rows: list[tuple[int, int, int]], separator: str = ",") -> Path:
    lines = [separator.join(("user_id", "item_id", "timestamp"))] + [separator.join(map(str, r)) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def cfg(log: Path, tmp_path: Path, **overrides: object) -> DataConfig:
    return DataConfig(**{"name": "custom", "interactions_file": str(log), "cache_dir": str(tmp_path / "cache"),
                         "min_user_interactions": 1, **overrides})  # type: ignore[arg-type]


def train_cli(tmp_path: Path, log: Path, *extra: str) -> subprocess.CompletedProcess:
    args = ["train", "data.name=custom", f"data.interactions_file={log}", f"data.cache_dir={tmp_path / 'cache'}",
            "model.max_len=10", "model.hidden=16", "trainer.max_epochs=1", "trainer.progress_bar=false",
            "trainer.threads=1", f"tracking.output_dir={tmp_path / 'runs'}",
            f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}", *extra]
    return subprocess.run([sys.executable, "-m", "recsys.cli", *args], capture_output=True, text=True,
                          cwd=tmp_path, timeout=600)


# ---- duplicated events ------------------------------------------------------------------------------------


def test_exact_duplicates_are_dropped_and_counted_repeats_at_other_times_kept(tmp_path: Path) -> None:
    again_later = [(1, 50, 1999)]  # user 1 watches item 50 again, later: a real repeat
    log = write_log(tmp_path / "log.csv", ROWS + ROWS + again_later)
    ds = prepare_dataset(cfg(log, tmp_path))
    assert ds.duplicates_dropped == len(ROWS)
    lengths = dict(zip(ds.sequences["user_idx"].to_list(), ds.sequences["items"].list.len().to_list()))
    assert lengths == {1: 6, **{u: 5 for u in range(2, 9)}}
    stats = dataset_stats(ds)
    assert stats["duplicates_dropped"] == len(ROWS) and stats["interactions"] == len(ROWS) + 1
    assert stats["test_targets_repeating_previous"] == pytest.approx(1 / 8, abs=1e-12)  # user 1's 50, 50
    assert stats["valid_targets_repeating_previous"] == 0.0
    # the count survives the cache
    assert prepare_dataset(cfg(log, tmp_path)).duplicates_dropped == len(ROWS)


def test_of_exact_duplicates_the_first_row_is_kept_with_its_rating(tmp_path: Path) -> None:
    log = tmp_path / "log.csv"
    log.write_text("user_id,item_id,timestamp,rating\n1,10,5,4\n1,20,6,1\n1,10,5,2\n1,30,7,5\n")
    ds = prepare_dataset(cfg(log, tmp_path, rating_column="rating", min_rating=3.0))
    assert ds.duplicates_dropped == 1
    # 10 keeps its first rating, 4 (the second, 2, would fail min_rating=3); 20, rated 1, does not pass
    assert ds.item_map["item_id"].to_list() == [10, 30] and ds.sequences["items"].to_list() == [[1, 2]]


@pytest.mark.parametrize(("doubled", "test", "valid"), [
    (ROWS, "100%", "0%"),  # every event written twice, a second apart: each test target repeats
    ([(u, i, t) for u, i, t in ROWS if i == 40], "0%", "100%"),  # only the item before the last: validation
])
def test_a_log_whose_targets_repeat_the_previous_item_warns_in_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], doubled: list[tuple[int, int, int]], test: str,
        valid: str) -> None:
    # Not exact duplicates (a second later), so kept: the warning is what tells the user.
    log = write_log(tmp_path / "log.csv", ROWS + [(u, i, t + 1) for u, i, t in doubled])
    assert main(["data", "prepare", "custom", "--from", str(log), "--min-user", "1",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        f"warning: custom: {test} of the users' last interactions (the test targets) and {valid} of the ones before "
        "them (the validation targets) repeat the item just before them: repeating the last item scores that high; "
        "check the log for events written twice (exact duplicates of user, item and timestamp are already "
        "dropped: 0)"]
    shown = dict(line.strip().split(": ", 1) for line in captured.out.splitlines())
    assert shown["test_targets_repeating_previous"] == ("1.00" if test == "100%" else "0.00")
    assert shown["valid_targets_repeating_previous"] == ("1.00" if valid == "100%" else "0.00")


def test_duplicates_reach_the_mlflow_run_and_the_console(tmp_path: Path) -> None:
    log = write_log(tmp_path / "log.csv", ROWS + ROWS[:7])
    done = train_cli(tmp_path, log)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "warning:" not in done.stderr
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.data.params["dataset.duplicates_dropped"] == "7"
    assert run.data.params["dataset.test_targets_repeating_previous"] == "0.0000"
    assert run.data.params["dataset.valid_targets_repeating_previous"] == "0.0000"


def test_the_duplicates_policy_is_part_of_the_cache_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from recsys.data import prepare as prepare_module

    log = write_log(tmp_path / "log.csv", ROWS)
    first = prepare_dataset(cfg(log, tmp_path)).fingerprint
    monkeypatch.setattr(prepare_module, "DUPLICATES_POLICY", "kept")
    assert prepare_dataset(cfg(log, tmp_path)).fingerprint != first


# ---- files and separators ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "content", "message"), [
    ("log.csv", b"", "the file is empty (0 bytes)"),
    ("log.csv.gz", gzip.compress(b""), "the file is empty (0 bytes)"),
    ("log.parquet", b"", "the file is empty (0 bytes)"),
    ("log.csv", b"\n\n", "no header line and no rows (only blank lines)"),
    ("log.csv", b"user_id,item_id,timestamp\n", "the file has a header line (user_id, item_id, timestamp) but no rows"),
    ("log.csv", b"user_id,item_id,timestamp", "the file has a header line (user_id, item_id, timestamp) but no rows"),
])
def test_an_empty_log_says_so_in_one_line_and_caches_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                             name: str, content: bytes, message: str) -> None:
    log = tmp_path / name
    log.write_bytes(content)
    assert main(["data", "prepare", "custom", "--from", str(log), "--cache-dir", str(tmp_path / "cache")]) == 2
    assert capsys.readouterr().err == f"error: {log}: {message}\n"
    assert not (tmp_path / "cache" / "prepared").exists()


def test_a_parquet_log_without_rows_says_so(tmp_path: Path) -> None:
    log = tmp_path / "log.parquet"
    pl.DataFrame(schema={"user_id": pl.Int64, "item_id": pl.Int64, "timestamp": pl.Int64}).write_parquet(log)
    with pytest.raises(DataError) as error:
        prepare_dataset(cfg(log, tmp_path))
    assert str(error.value) == f"{log}: the file has columns (user_id, item_id, timestamp) but no rows"


def test_a_tab_separator_typed_as_backslash_t_reads_a_tsv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = write_log(tmp_path / "log.tsv", ROWS, separator="\t")
    for typed in ("\\t", "tab", "\t"):  # `--separator '\t'` in a shell passes the two characters \ and t
        assert main(["data", "stats", "custom", "--from", str(log), "--separator", typed, "--min-user", "1",
                     "--cache-dir", str(tmp_path / "cache"), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["interactions"] == len(ROWS)


@pytest.mark.parametrize(("separator", "shown"), [(";;", "';;'"), ("", "empty"), ("§", "'§'")])
def test_a_separator_that_is_not_one_byte_is_one_line(tmp_path: Path, separator: str, shown: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    log = write_log(tmp_path / "log.csv", ROWS)
    assert main(["data", "stats", "custom", "--from", str(log), "--separator", separator,
                 "--cache-dir", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err.splitlines()
    # the option is the config key data.separator, which the line names (it said `separator:` alone)
    assert err == [f"error: data.separator: must be one character (e.g. ',', ';' or \\t), got {shown}: the CSV reader "
                   "splits on a single byte; convert a log with a longer separator first"]
    with pytest.raises(ConfigError, match=r"^config: data\.separator: must be one character"):
        from recsys.run_config import load_run_config

        load_run_config(None, [f"data.separator='{separator}'"])


# ---- users too short for leave-one-out ----------------------------------------------------------------------


def test_no_user_long_enough_to_split_is_one_line_before_training(tmp_path: Path) -> None:
    log = write_log(tmp_path / "log.csv", [(u, i, t) for u, i, t in ROWS if t % 1000 < 20])  # 2 each
    done = train_cli(tmp_path, log, "data.min_user_interactions=1")
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == (
        "error: custom: leave-one-out needs users with at least 3 interactions (training, validation and test "
        "target), but none of the 8 users has that many (longest: 2; ids 1, 2, 3, 4, 5, ...); use a log with "
        "longer histories, or data.split=temporal")
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    assert not (tmp_path / "mlflow.db").exists()  # no MLflow run was started, so none is left RUNNING


def test_users_too_short_to_evaluate_train_only_and_are_counted(tmp_path: Path) -> None:
    short = [(u, i, t) for u, i, t in ROWS if u > 6 or t % 1000 < 20]  # users 1-6: 2 interactions, 7-8: 5
    done = train_cli(tmp_path, write_log(tmp_path / "log.csv", short), "data.min_user_interactions=1")
    assert done.returncode == 0, done.stderr[-2000:]
    assert ("note: 6 of 8 users have fewer than 3 interactions (ids 1, 2, 3, 4, 5, ...): they only train, "
            "leave-one-out cannot evaluate them (data.min_user_interactions=3 drops them)") in done.stderr.splitlines()


def test_the_users_too_short_to_evaluate_are_named_by_their_own_ids(tmp_path: Path) -> None:
    log = tmp_path / "log.csv"
    log.write_text("user_id,item_id,timestamp\n" + "".join(f"zoe,{i},{i}\n" for i in range(1, 6))
                   + "bob,1,1\nann,1,1\nann,2,2\n")
    ds = prepare_dataset(cfg(log, tmp_path))
    split = make_split(ds, DataConfig())
    assert split.test["user_idx"].to_list() == [3]  # zoe; ann and bob only train
    assert not_evaluated(ds, split) == (
        "note: 2 of 3 users have fewer than 3 interactions (ids ann, bob): they only train, leave-one-out cannot "
        "evaluate them (data.min_user_interactions=3 drops them)")
    one_short = prepare_dataset(cfg(log, tmp_path, min_user_interactions=2))
    assert "(id ann)" in not_evaluated(one_short, make_split(one_short, DataConfig()))


def test_a_temporal_split_without_validation_targets_is_one_data_error(tmp_path: Path) -> None:
    # Every user's interactions at the same three seconds: the 0.5 and 0.6 cuts both fall on t=2, and nobody has
    # an interaction in [2, 2).
    rows = [(user, item, t) for user in range(1, 5) for item, t in ((10, 1), (20, 2), (30, 3))]
    ds = prepare_dataset(cfg(write_log(tmp_path / "log.csv", rows), tmp_path))
    with pytest.raises(DataError) as error:
        make_split(ds, DataConfig(split="temporal", valid_quantile=0.5, test_quantile=0.6))
    assert str(error.value) == (
        "custom: the temporal split at data.valid_quantile=0.5, data.test_quantile=0.6 leaves no validation target "
        "(no user has interactions on both sides of the cut); move the quantiles")
