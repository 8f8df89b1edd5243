"""trainer.popularity_correction: training logits get + log p(item), the model's own scores do not."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from recsys.config import TrainerConfig
from recsys.models import SASRec, SASRecConfig
from recsys.training.module import RecommenderModule, log_popularity

N_ITEMS = 6


def test_log_popularity_is_the_smoothed_training_share_of_each_item() -> None:
    log_p = log_popularity([[1, 1, 2], [3, 1]], N_ITEMS)
    counts = torch.tensor([4, 2, 2, 1, 1, 1], dtype=torch.float64)  # +1 each
    torch.testing.assert_close(log_p[1:], (counts / counts.sum()).log().float())
    assert log_p[0] == 0  # padding
    assert log_p.shape == (N_ITEMS + 1,)


def make_module(log_p: torch.Tensor | None) -> RecommenderModule:
    torch.manual_seed(0)
    model = SASRec(N_ITEMS, SASRecConfig(max_len=4, hidden=8, n_layers=1, dropout=0.0)).eval()
    return RecommenderModule(model, N_ITEMS, loss=model.config.loss, trainer_config=TrainerConfig(),
                             log_popularity=log_p)


@pytest.mark.filterwarnings("ignore:.*self.trainer. reference is not registered")  # training_step outside a Trainer
def test_the_training_loss_adds_log_popularity_to_every_logit() -> None:
    batch = {"input": torch.tensor([[0, 1, 2, 3], [4, 5, 1, 2]]), "target": torch.tensor([[0, 2, 3, 4], [5, 1, 2, 6]])}
    log_p = log_popularity([[1, 1, 1, 1, 2], [3, 4, 5, 6]], N_ITEMS)
    corrected, plain = make_module(log_p), make_module(None)
    with torch.no_grad():
        hidden = plain.model.encode(batch["input"])
        has_target = batch["target"] > 0
        logits = hidden[has_target] @ plain.model.item_vectors()[1:].T  # [positions, n_items]
        targets = batch["target"][has_target] - 1
        want_corrected = F.cross_entropy(logits + log_p[1:], targets)
        want_plain = F.cross_entropy(logits, targets)
        torch.testing.assert_close(corrected.training_step(batch, 0), want_corrected)
        torch.testing.assert_close(plain.training_step(batch, 0), want_plain)
        assert not torch.isclose(want_corrected, want_plain)
        # Scoring (validation, test, serving) is the model's own: no correction.
        torch.testing.assert_close(corrected(batch["input"]), plain(batch["input"]))
