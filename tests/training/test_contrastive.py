"""trainer.contrastive: InfoNCE and MCLRec's regulariser against hand-computed values, the loss each model
trains with, and real runs (seeded, whatever the DataLoader workers; logged to a real MLflow store)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from recsys.config import ContrastiveConfig, TrainerConfig, replace
from recsys.data.batches import mask_batch, shift_batch
from recsys.errors import ConfigError
from recsys.models import BERT4Rec, BERT4RecConfig, GRU4Rec, GRU4RecConfig, HSTU, HSTUConfig, SASRec, SASRecConfig
from recsys.run_config import load_run_config
from recsys.training.contrastive import ContrastiveViews, info_nce, margin_regularizer
from recsys.training.module import RecommenderModule
from recsys.training.train import train

# float32 sums of a few exponentials: rounding stays far below 1e-6
TOLERANCE = 1e-6


def test_info_nce_equals_the_hand_computed_value() -> None:
    # Views e1, e2 (first) and e1, e2 (second) at temperature 0.5: each view's positive scores 1 / 0.5 = 2,
    # its two negatives (the orthogonal views) 0; so every one of the 4 rows costs -log(e^2 / (e^2 + 1 + 1)).
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    want = math.log(math.exp(2) + 2) - 2  # 0.23954...
    assert info_nce(a, a.clone(), temperature=0.5).item() == pytest.approx(want, abs=TOLERANCE)
    # Unequal rows, dot product, tau 1: z = [(1,0), (0,2), (1,1), (0,1)], rows' similarities by hand.
    b = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    a2 = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    rows = [  # (positive, others) for each of the 4 views
        (1, [0, 0]),  # (1,0): with (1,1) -> 1; with (0,2), (0,1) -> 0
        (2, [0, 2]),  # (0,2): with (0,1) -> 2; with (1,0) -> 0, (1,1) -> 2
        (1, [2, 1]),  # (1,1): with (1,0) -> 1; with (0,2) -> 2, (0,1) -> 1
        (2, [0, 1]),  # (0,1): with (0,2) -> 2; with (1,0) -> 0, (1,1) -> 1
    ]
    want = sum(math.log(math.exp(p) + sum(math.exp(o) for o in others)) - p for p, others in rows) / 4
    assert info_nce(a2, b, temperature=1.0).item() == pytest.approx(want, abs=TOLERANCE)


def test_cosine_info_nce_ignores_the_vectors_lengths() -> None:
    a, b = torch.randn(5, 3), torch.randn(5, 3)
    torch.testing.assert_close(info_nce(a, b, 0.2, "cosine"), info_nce(3 * a, 0.5 * b, 0.2, "cosine"))


def test_margin_regularizer_equals_the_hand_computed_value() -> None:
    # The first case above: positive 2, hardest negative 0, negatives (0, 0) per row:
    # relu(2 - 0) + mean(max(2, 0) - (0, 0)) = 2 + 2.
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert margin_regularizer(a, a.clone(), temperature=0.5).item() == pytest.approx(4.0, abs=TOLERANCE)


def test_off_by_default() -> None:
    assert TrainerConfig().contrastive == ContrastiveConfig(method="none")
    model = SASRec(6, SASRecConfig(max_len=4, hidden=8, n_layers=1))
    module = RecommenderModule(model, 6, loss=model.config.loss, trainer_config=TrainerConfig())
    assert module.augmenters is None and module.automatic_optimization
    assert list(module.state_dict()) == [f"model.{k}" for k in model.state_dict()]


def test_bad_values_are_one_line_errors_naming_the_key() -> None:
    cases = {
        "trainer.contrastive.crop_ratio=1.5": r"^config: trainer\.contrastive\.crop_ratio: must be in \(0, 1\], got 1\.5$",
        "trainer.contrastive.mask_ratio=-0.1": r"^config: trainer\.contrastive\.mask_ratio: must be in \[0, 1\], got -0\.1$",
        "trainer.contrastive.reorder_ratio=2": r"^config: trainer\.contrastive\.reorder_ratio: must be in \[0, 1\], got 2\.0$",
        "trainer.contrastive.temperature=0": r"^config: trainer\.contrastive\.temperature: must be greater than 0, got 0\.0$",
        "trainer.contrastive=simclr": r"^config: trainer\.contrastive: 'simclr' is not one of 'none', 'cl4srec', 'mclrec'$",
        "trainer.contrastive.augmentations=[]": r"^config: trainer\.contrastive\.augmentations: needs at least one of",
        "trainer.contrastive.augmentations=[crop,crop]": r"^config: trainer\.contrastive\.augmentations: lists an "
                                                         r"augmentation twice",
    }
    for override, message in cases.items():
        with pytest.raises(ConfigError, match=message) as caught:
            load_run_config(None, [override])
        assert "\n" not in str(caught.value)


N_ITEMS = 12
WINDOWS = torch.tensor([[0, 0, 0, 1, 2, 3, 4], [0, 5, 6, 7, 8, 9, 10], [0, 0, 0, 0, 0, 11, 12],
                        [3, 1, 4, 1, 5, 9, 2]])


def tiny_models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {
        "sasrec": SASRec(N_ITEMS, SASRecConfig(max_len=6, hidden=8, n_layers=1)),
        "gru4rec": GRU4Rec(N_ITEMS, GRU4RecConfig(max_len=6, hidden=8)),
        "bert4rec": BERT4Rec(N_ITEMS, BERT4RecConfig(max_len=6, hidden=8, n_layers=1)),
        "hstu": HSTU(N_ITEMS, HSTUConfig(max_len=6, hidden=8, n_layers=1)),
    }


@pytest.mark.filterwarnings("ignore:.*self.trainer. reference is not registered")  # training_step outside a Trainer
@pytest.mark.parametrize("name", ["sasrec", "gru4rec", "bert4rec", "hstu"])
def test_cl4srec_adds_weighted_info_nce_of_two_views_to_each_models_loss(name: str) -> None:
    model = tiny_models()[name].eval()  # no dropout: the losses are exact functions of the batch
    objective = model.objective()
    times = WINDOWS * 3_600 + 1_600_000_000 * (WINDOWS > 0)
    batch = (mask_batch(WINDOWS, objective.mask_token, 0.3, torch.Generator().manual_seed(1), times=times)
             if objective.batches == "mask" else shift_batch(WINDOWS, times))
    if not model.uses_timestamps:
        batch = {k: v for k, v in batch.items() if k in ("input", "target")}
    cfg = TrainerConfig(contrastive=ContrastiveConfig(method="cl4srec", weight=0.5))
    plain = RecommenderModule(model, N_ITEMS, loss=objective.loss, trainer_config=replace(cfg, contrastive="none"))
    with_cl = RecommenderModule(model, N_ITEMS, loss=objective.loss, trainer_config=cfg)
    with torch.no_grad():
        total, next_item = with_cl.training_step(batch, 0), plain.training_step(batch, 0)
        # The same views by hand: the clean histories (a mask batch's hidden items put back), the generator
        # a step outside fit starts from (the seed), the model's [MASK] for mask batches, else dropping.
        history = batch["input"] if objective.batches != "mask" else torch.where(batch["target"] > 0, batch["target"],
                                                                                    batch["input"])
        views = ContrastiveViews(cfg.contrastive, objective.mask_token if objective.batches == "mask" else 0).draw(
            history, batch.get("input_times"), torch.Generator().manual_seed(cfg.seed))
        h1, h2 = (model.user_vector(items, view_times) for items, view_times in views)
        want = next_item + 0.5 * info_nce(h1, h2, 1.0)
    assert torch.isfinite(total)
    assert total.item() == pytest.approx(want.item(), rel=1e-5)  # one float32 sum in another order
    assert total.item() > next_item.item()  # InfoNCE is positive: the option changes what is trained


QUICK = ["data.max_history=30", "model.max_len=30", "model.hidden=32", "trainer.progress_bar=false",
         "trainer.threads=2", "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.patience=0"]


def quick_config(tmp_path: Path, *extra: str):
    return load_run_config(Path(__file__).parents[1] / "configs" / "sasrec_small.yaml", [
        *QUICK, f"tracking.output_dir={tmp_path / 'runs'}", f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
        *extra])


def quality(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if k.startswith(("valid_", "test_"))}


def test_cl4srec_run_is_seeded_whatever_the_workers_and_logged(tmp_path: Path) -> None:
    plain = train(quick_config(tmp_path, "tracking.enabled=false"))
    first = train(quick_config(tmp_path, "trainer.contrastive=cl4srec"))
    workers = train(quick_config(tmp_path, "trainer.contrastive=cl4srec", "trainer.num_workers=2",
                                 "tracking.enabled=false"))
    assert quality(first.metrics) == quality(workers.metrics)  # views come from the module's generator
    assert [r["train_contrastive_loss"] for r in first.history] == [r["train_contrastive_loss"] for r in workers.history]
    assert quality(first.metrics) != quality(plain.metrics)
    assert "train_contrastive_loss" not in plain.history[0]
    assert (first.contrastive, plain.contrastive) == ("cl4srec", "none")
    run = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(first.run_id)
    assert run.data.params["trainer.contrastive.method"] == "cl4srec"
    assert run.data.params["trainer.contrastive.crop_ratio"] == "0.6"
    assert run.data.tags["contrastive"] == "cl4srec"
    assert "train_contrastive_loss" in run.data.metrics


def test_mclrec_run_is_reproducible_and_saves_the_model_alone(tmp_path: Path) -> None:
    from recsys.saved_model import load_model_files

    cfg = quick_config(tmp_path, "trainer.contrastive=mclrec", "tracking.enabled=false")
    first, second = train(cfg), train(cfg)
    assert quality(first.metrics) == quality(second.metrics)
    assert first.contrastive == "mclrec"
    row = first.history[0]
    assert {"train_loss", "train_contrastive_loss", "train_augmenter_loss"} <= set(row)
    saved = load_model_files(first.model_dir)
    assert not [k for k in saved.state_dict if "augmenter" in k]  # the augmenters only help training


def test_a_counting_model_is_refused_in_one_line(tmp_path: Path) -> None:
    cfg = load_run_config(None, [
        "model.name=popularity", "data.max_history=30", "trainer.contrastive=cl4srec",
        "tracking.enabled=false", f"tracking.output_dir={tmp_path / 'runs'}"])
    with pytest.raises(ConfigError, match=r"^trainer\.contrastive: cl4srec needs a model trained by gradient steps"):
        train(cfg)
