"""trainer.exclude_history_from_loss: each position's earlier items leave the training softmax, its target never."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from recsys.config import TrainerConfig
from recsys.errors import ConfigError
from recsys.models import BERT4Rec, BERT4RecConfig, SASRec, SASRecConfig
from recsys.models.sasrec_actr import SASRecACTR, SASRecACTRConfig
from recsys.training.module import RecommenderModule

N_ITEMS = 8
# left padding; item 3 comes back as the last target of the second row (a repeat must stay learnable)
BATCH = {"input": torch.tensor([[0, 1, 2, 3], [4, 3, 5, 1]]), "target": torch.tensor([[0, 2, 3, 6], [3, 5, 1, 3]])}


def module(loss: str = "ce", exclude: bool = True) -> RecommenderModule:
    torch.manual_seed(0)
    model = SASRec(N_ITEMS, SASRecConfig(max_len=4, hidden=8, n_layers=1, dropout=0.0, loss=loss)).eval()
    return RecommenderModule(model, N_ITEMS, loss=model.config.loss,
                             trainer_config=TrainerConfig(exclude_history_from_loss=exclude))


def reference_loss(mod: RecommenderModule) -> torch.Tensor:
    """Cross-entropy over logits with every earlier item of the position at -inf, written one position at a time."""
    hidden = mod.model.encode(BATCH["input"])
    table = mod.model.item_vectors()
    losses = []
    for b in range(2):
        for t in range(4):
            target = int(BATCH["target"][b, t])
            if target == 0:
                continue
            logits = hidden[b, t] @ table[1:].T  # [n_items], item i at column i - 1
            for j in range(t + 1):
                item = int(BATCH["input"][b, j])
                if item > 0 and item != target:
                    logits = logits.index_fill(0, torch.tensor([item - 1]), float("-inf"))
            losses.append(F.cross_entropy(logits.unsqueeze(0), torch.tensor([target - 1])))
    return torch.stack(losses).mean()


@pytest.mark.filterwarnings("ignore:.*self.trainer. reference is not registered")  # a step outside a Trainer
def test_the_full_softmax_leaves_each_positions_earlier_items_out_but_not_its_target() -> None:
    mod = module()
    with torch.no_grad():
        got = mod._next_item_loss(BATCH, log=False)
        want = reference_loss(mod)
        plain = module(exclude=False)._next_item_loss(BATCH, log=False)
    assert float(got) == pytest.approx(float(want), abs=1e-5)
    assert abs(float(got) - float(plain)) > 1e-3  # the option changes the loss


def test_what_is_left_out_is_each_positions_earlier_items_other_than_its_target() -> None:
    mod = module(loss="sampled_ce")  # the same HistoryLogits reach sampled_ce (tests/models/test_actr_memory.py)
    left_out = mod._history_left_out(BATCH["input"], BATCH["target"])  # rows: the 7 positions with a target
    assert left_out.ids.shape == (7, 4)
    assert left_out.ids[0].tolist() == [0, 1, 0, 0]  # row 0, t 1: items after t are not history (id 0)
    assert left_out.ids[-1].tolist() == [4, 3, 5, 1]  # row 1, t 3: target 3, a repeat
    assert [v < -1e3 for v in left_out.values[-1].tolist()] == [True, False, True, True]  # 3 stays in


@pytest.mark.parametrize("build, reason", [
    (lambda: (BERT4Rec(N_ITEMS, BERT4RecConfig(max_len=4, hidden=8, n_layers=1, n_heads=1)), None), "'mask' batches"),
    (lambda: (SASRec(N_ITEMS, SASRecConfig(max_len=4, hidden=8, n_layers=1, loss="bce")), None), "loss 'bce'"),
    (lambda: (SASRecACTR(N_ITEMS, SASRecACTRConfig(max_len=4, hidden=8, n_layers=1)), None), "own memory term"),
])
def test_models_it_cannot_act_on_are_refused_in_one_line(build, reason) -> None:
    model, _ = build()
    with pytest.raises(ConfigError, match=reason) as error:
        RecommenderModule(model, N_ITEMS, loss=model.config.loss,
                          trainer_config=TrainerConfig(exclude_history_from_loss=True))
    assert "\n" not in str(error.value)
