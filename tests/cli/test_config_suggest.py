"""`recsys config suggest`: a run config chosen from a dataset's statistics (recsys/suggest.py's rules)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from recsys.cli import main
from recsys.run_config import load_run_config
from recsys.suggest import (FULL_CE_MAX_ITEMS, MAX_LEN, MIN_LEN, REPEAT_SHARE, SAMPLED_NEGATIVES, choices,
                            history_repeat_share)


def stats(items: int = 1000, p90: float = 100.0) -> dict:
    return {"users": 10, "items": items, "interactions": 500,
            "sequence_length": {"mean": 50.0, "p50": 40.0, "p90": p90, "p99": 200.0, "max": 300}}


def chosen(**kwargs) -> dict:
    share = kwargs.pop("repeat_share", 0.0)
    return {c.key: c.value for c in choices(stats(**kwargs), share)}


def test_the_repeat_share_counts_last_items_seen_earlier_by_the_same_user() -> None:
    sequences = pl.Series([[1, 2, 1], [1, 2, 3], [4, 5], [7, 7, 8, 7]], dtype=pl.List(pl.Int64))
    assert history_repeat_share(sequences) == pytest.approx(2 / 3, abs=1e-12)  # [4, 5] is too short to evaluate
    assert history_repeat_share(pl.Series([[1, 2]], dtype=pl.List(pl.Int64))) == 0.0


@pytest.mark.parametrize("share, keeps_history", [(0.0, False), (REPEAT_SHARE - 0.01, False), (REPEAT_SHARE, True),
                                                  (0.52, True)])
def test_repeat_data_keeps_the_history_rankable_and_in_the_loss(share: float, keeps_history: bool) -> None:
    values = chosen(repeat_share=share)
    assert values["evaluation.exclude_seen"] is not keeps_history
    assert values["trainer.exclude_history_from_loss"] is not keeps_history


@pytest.mark.parametrize("p90, max_len", [(3.0, MIN_LEN), (86.0, 90), (90.0, 90), (244.4, MAX_LEN)])
def test_max_len_is_the_90th_percentile_rounded_up_within_bounds(p90: float, max_len: int) -> None:
    assert chosen(p90=p90)["model.max_len"] == max_len


def test_a_huge_catalogue_gets_sampled_softmax_with_popularity_negatives() -> None:
    assert chosen(items=FULL_CE_MAX_ITEMS)["model.loss"] == "ce"
    assert chosen(items=FULL_CE_MAX_ITEMS + 1)["model.loss"] == {
        "name": "sampled_ce", "n_negatives": SAMPLED_NEGATIVES, "negatives": "popularity"}


def repeat_log(path: Path) -> Path:
    """40 users, 12 events each over 20 items; every user's last event repeats one of their earlier items."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["user_id", "item_id", "timestamp"])
        for user in range(40):
            items = [(user * 3 + step) % 20 + 1 for step in range(11)]
            for step, item in enumerate([*items, items[0]]):
                writer.writerow([user, item, 1_000 + step])
    return path


def test_the_written_config_loads_says_why_and_trains(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log, out = repeat_log(tmp_path / "log.csv"), tmp_path / "suggested.yaml"
    assert main(["config", "suggest", "custom", "--from", str(log), "-o", str(out)]) == 0
    text = out.read_text()
    assert text.splitlines()[0] == f"# Written by: recsys config suggest custom --from {log} -o {out}"
    assert "100.0% of the test targets occur earlier in the user's history" in text
    cfg = load_run_config(out)
    assert cfg.data.interactions_file == str(log)  # absolute: the config works from any folder
    assert cfg.evaluation.exclude_seen is False and cfg.trainer.exclude_history_from_loss is False
    assert cfg.model.max_len == MIN_LEN  # p90 of 12 events, raised to the floor
    assert "wrote" in capsys.readouterr().err
    # the config is a run config as it stands: one epoch of it trains and evaluates
    assert main(["train", "--config", str(out), "trainer.max_epochs=1", f"tracking.output_dir={tmp_path / 'runs'}",
                 "tracking.enabled=false"]) == 0
    assert list((tmp_path / "runs").glob("*/model/manifest.json"))


def test_an_existing_file_is_never_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "mine.yaml"
    out.write_text("# my own config\n")
    done = subprocess.run([sys.executable, "-m", "recsys.cli", "config", "suggest", "ml-latest-small", "-o",
                           str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: {out}: already exists; give another --output (nothing was written)"
    assert out.read_text() == "# my own config\n"


def test_an_unknown_model_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "suggest", "ml-latest-small", "--model", "nope", "-o", str(tmp_path / "c.yaml")]) == 2
    assert capsys.readouterr().err.strip().startswith("error: config suggest: unknown model 'nope' (known: ")
    assert not (tmp_path / "c.yaml").exists()


def test_the_embedded_dataset_gets_movielens_choices(tmp_path: Path) -> None:
    out = tmp_path / "s.yaml"
    assert main(["config", "suggest", "ml-latest-small", "--model", "gru4rec", "-o", str(out)]) == 0
    values = yaml.safe_load(out.read_text())
    assert values["evaluation"]["exclude_seen"] is True  # MovieLens has no repeats
    assert values["model"]["name"] == "gru4rec" and "n_heads" not in values["model"]  # only the model's keys
    load_run_config(out)
