"""Sequence models with ACT-R memory (sasrec_actr, hstu_actr): the memory logits, their training loss and
their serving form agree.

The hand computations below follow the formula in recsys/models/actr_memory.py's docstring, one item at a
time, so that the batched tensor code is checked against something written differently.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from recsys.models.losses import HistoryLogits, full_ce, sampled_ce
from recsys.models.hstu_actr import HSTUACTR, HSTUACTRConfig
from recsys.models.sasrec_actr import SASRecACTR, SASRecACTRConfig

DAY = 86_400.0
TOL = 1e-5  # float32 arithmetic on values of order 1


BUILDERS = {
    "sasrec_actr": lambda **o: SASRecACTR(12, SASRecACTRConfig(max_len=6, hidden=8, n_layers=1, n_heads=1,
                                                                dropout=0.0, **o)),
    "hstu_actr": lambda **o: HSTUACTR(12, HSTUACTRConfig(max_len=6, hidden=8, n_layers=1, n_heads=1, dropout=0.0,
                                                          attention_dim=8, linear_dim=8, **o)),
}


@pytest.fixture(params=sorted(BUILDERS))
def name(request) -> str:
    return request.param


def _model(name: str, **overrides):
    torch.manual_seed(0)
    model = BUILDERS[name](**overrides).eval()
    with torch.no_grad():  # a non-trivial gate, so that a and b differ per state
        if model.config.gate == "state":
            model.memory.gate.weight.normal_(0.0, 0.5)
        model.memory.gate.bias.copy_(torch.tensor([0.3, -0.2, -0.4]))
    return model


# items 3 and 5 repeat; left padding; days 0, 1, 2, 4, 5
ITEMS = torch.tensor([[0, 3, 5, 3, 7, 5]])
TIMES = torch.tensor([[0.0, 0.0, 1.0, 2.0, 4.0, 5.0]]) * DAY + 1.7e9


def _day(k: int) -> float:
    return float((TIMES[0, k] - 1.7e9) / DAY)


def _hand_base(item: int, t: int, asked_day: float, d: float) -> float:
    """ln sum over uses k <= t of `item` of (asked - day_k + 1)^(-d)."""
    days = ((TIMES[0] - 1.7e9) / DAY).tolist()
    terms = [(max(asked_day - days[k], 0.0) + 1.0) ** (-d) for k in range(t + 1) if ITEMS[0, k] == item]
    return math.log(sum(terms))


def test_history_logits_are_the_formula_on_the_last_use_of_each_item_up_to_each_position(name) -> None:
    model = _model(name)
    query = TIMES.clone()
    query[0, :-1] = TIMES[0, 1:]  # training asks each position at the next item's time
    query[0, -1] = TIMES[0, -1] + 2 * DAY
    query[0, 2] = TIMES[0, 2]  # position 2's target is in its basket: item 5 is used at the query time
    with torch.no_grad():
        states = model.encode(ITEMS, TIMES)
        logits, applies = (part[0] for part in model.history_logits(ITEMS, TIMES, query, states))  # [t, j]
        a, b, c = model.memory.weights(states[0])
    d = float(model.memory.decay.detach())
    for t in range(1, 6):
        asked = float((query[0, t] - 1.7e9) / DAY)
        for j in range(6):
            item = int(ITEMS[0, j])
            last_use = item > 0 and j <= t and all(int(ITEMS[0, k]) != item for k in range(j + 1, t + 1))
            now = any(int(ITEMS[0, k]) == item and asked - _day(k) <= 0 for k in range(t + 1))
            want = float(a[t]) * _hand_base(item, t, asked, d) + float(b[t]) + float(c[t]) * now if last_use else 0.0
            assert float(logits[t, j]) == pytest.approx(want, abs=TOL), (t, j)
            assert bool(applies[t, j]) == last_use, (t, j)


def test_a_position_never_sees_later_items(name) -> None:
    model = _model(name)
    changed = ITEMS.clone()
    changed[0, 4:] = torch.tensor([9, 3])  # rewrite positions 4 and 5
    with torch.no_grad():
        before = model.history_logits(ITEMS, TIMES, None, model.encode(ITEMS, TIMES))[0]
        after = model.history_logits(changed, TIMES, None, model.encode(changed, TIMES))[0]
    torch.testing.assert_close(before[0, :4], after[0, :4], atol=TOL, rtol=0)


@pytest.mark.parametrize("later", [3 * DAY, 0.0], ids=["3 days on", "in the last basket"])
def test_serving_scores_equal_the_training_logits_at_the_last_position(name, later) -> None:
    model = _model(name)
    at = TIMES[:, -1] + later
    query = torch.cat([TIMES[:, 1:], at.unsqueeze(1)], dim=1)  # each position asked at the next item, the last at `at`
    with torch.no_grad():
        train = model.history_logits(ITEMS, TIMES, query, model.encode(ITEMS, TIMES, query))[0][0, -1]  # [j]
        serve = model.history_scores(ITEMS, TIMES, at)[0]
    for j in range(1, 6):
        last = max(k for k in range(6) if ITEMS[0, k] == ITEMS[0, j])
        assert float(serve[j]) == pytest.approx(float(train[last]), abs=TOL)
    assert float(serve[0]) == 0.0  # padding
    scores = model.score(ITEMS, TIMES, at)[0]
    plain = (model.user_vector(ITEMS, TIMES, at) @ model.item_vectors().T)[0]
    torch.testing.assert_close(scores[[3, 5, 7]] - plain[[3, 5, 7]], serve[[3, 2, 4]], atol=TOL, rtol=0)
    torch.testing.assert_close(scores[[1, 2, 4, 6]], plain[[1, 2, 4, 6]], atol=TOL, rtol=0)  # not in history


def _history(n: int, n_items: int, width: int, seed: int) -> HistoryLogits:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, n_items + 1, (n, width), generator=g)
    return HistoryLogits(ids, torch.randn(n, width, generator=g).requires_grad_(True))


def _dense_reference(hidden, table, history):
    logits = hidden @ table[1:].T
    extra = torch.zeros_like(logits)
    for r in range(history.ids.shape[0]):  # one value at a time, unlike the scatter under test
        for j in range(history.ids.shape[1]):
            if history.ids[r, j] > 0:
                extra[r, history.ids[r, j] - 1] = extra[r, history.ids[r, j] - 1] + history.values[r, j]
    return logits + extra


def test_full_ce_with_history_logits_matches_the_materialised_loss_and_its_gradients() -> None:
    g = torch.Generator().manual_seed(3)
    n, n_items, dim = 70, 40, 8
    hidden = torch.randn(n, dim, generator=g, requires_grad=True)
    table = torch.randn(n_items + 1, dim, generator=g, requires_grad=True)
    targets = torch.randint(1, n_items + 1, (n,), generator=g)
    history = _history(n, n_items, 5, seed=4)
    fused = full_ce(hidden, targets, table, history)  # CPU float32: the fused, chunked path
    grads = torch.autograd.grad(fused, [hidden, table, history.values])
    ref = F.cross_entropy(_dense_reference(hidden, table, history), targets - 1)
    ref_grads = torch.autograd.grad(ref, [hidden, table, history.values])
    assert float(fused.detach()) == pytest.approx(float(ref.detach()), abs=1e-5)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_sampled_ce_adds_history_logits_to_the_target_and_the_negatives() -> None:
    g = torch.Generator().manual_seed(5)
    n, n_items, dim = 30, 20, 4
    hidden = torch.randn(n, dim, generator=g)
    table = torch.randn(n_items + 1, dim, generator=g)
    targets = torch.randint(1, n_items + 1, (n,), generator=g)
    negatives = torch.tensor([2, 7, 11, 19])
    history = _history(n, n_items, 6, seed=6)
    got = sampled_ce(hidden, targets, table, 4, negatives=negatives, history=history, history_negatives=False)
    dense = _dense_reference(hidden, table, history)  # [n, n_items] over items 1..n
    logits = torch.cat([dense.gather(1, (targets - 1).unsqueeze(1)), dense[:, negatives - 1]], dim=1)
    logits[:, 1:] = logits[:, 1:].masked_fill(negatives.unsqueeze(0) == targets.unsqueeze(1), float("-inf"))
    want = F.cross_entropy(logits, torch.zeros_like(targets))
    assert float(got) == pytest.approx(float(want), abs=1e-5)


def test_sampled_ce_also_ranks_the_target_against_each_positions_own_history_items_once() -> None:
    g = torch.Generator().manual_seed(7)
    n, n_items, dim, width = 25, 30, 4, 6
    hidden = torch.randn(n, dim, generator=g, requires_grad=True)
    table = torch.randn(n_items + 1, dim, generator=g)
    targets = torch.randint(1, n_items + 1, (n,), generator=g)
    ids = torch.stack([torch.randperm(n_items, generator=g)[:width] + 1 for _ in range(n)])  # distinct per row
    ids[:, :2] = 0  # padding
    ids[0, 3] = targets[0]  # a repeat target: it stays class 0, not a negative of itself
    negatives = torch.tensor([int(ids[1, 4]), 5, 9, 5])  # one of row 1's history items; 5 drawn twice
    history = HistoryLogits(ids, torch.randn(n, width, generator=g))
    got = sampled_ce(hidden, targets, table, 4, negatives=negatives, history=history)
    dense = _dense_reference(hidden, table, history)  # [n, n_items]
    losses = []
    for r in range(n):  # the softmax over {target} + negatives not in the row's history + the row's history
        own = [int(i) for i in ids[r] if i > 0 and i != targets[r]]
        shared = [int(i) for i in negatives if i != targets[r] and int(i) not in ids[r].tolist()]
        row = dense[r, [int(targets[r]) - 1] + [i - 1 for i in shared + own]]
        losses.append(torch.logsumexp(row, 0) - row[0])
    want = torch.stack(losses).mean()
    assert float(got.detach()) == pytest.approx(float(want.detach()), abs=1e-5)
    torch.testing.assert_close(torch.autograd.grad(got, hidden)[0], torch.autograd.grad(want, hidden)[0],
                               atol=1e-5, rtol=1e-4)


def test_training_moves_the_decay_and_the_gate(name) -> None:
    model = _model(name)
    model.train()
    query = torch.zeros_like(TIMES)
    query[0, :-1] = TIMES[0, 1:]
    states = model.encode(ITEMS, TIMES, query)
    extra, applies = model.history_logits(ITEMS, TIMES, query, states)
    has_target = torch.tensor([[False, True, True, True, True, False]])
    targets = torch.tensor([5, 3, 7, 5])  # items 3 and 5 come back: memory helps
    ids = ITEMS.unsqueeze(1).expand(-1, 6, -1).masked_fill(~applies, 0)
    loss = full_ce(states[has_target], targets, model.item_vectors(), HistoryLogits(ids[has_target],
                                                                                 extra[has_target]))
    loss.backward()
    assert model.memory.raw_decay.grad is not None and float(model.memory.raw_decay.grad.abs()) > 0
    assert float(model.memory.gate.bias.grad.abs().sum()) > 0


def test_a_fixed_decay_and_a_global_gate_stay_as_configured(name) -> None:
    model = _model(name, learn_decay=False, gate="global", decay=0.8)
    assert "memory.raw_decay" not in dict(model.named_parameters())
    assert float(model.memory.decay) == pytest.approx(0.8, abs=1e-6)
    assert not model.memory.gate.weight.requires_grad


@pytest.mark.parametrize("config", [SASRecACTRConfig, HSTUACTRConfig])
def test_only_softmax_losses_are_accepted(config) -> None:
    with pytest.raises(ValueError, match="loss"):
        config(loss="bce")


def test_history_logits_at_shared_candidates_sum_per_item_with_repeats_and_gradients() -> None:
    # The slot-table path (shared negatives, which may repeat an item) against a comparison written out.
    g = torch.Generator().manual_seed(8)
    ids = torch.randint(0, 15, (9, 6), generator=g)
    ids[0] = torch.tensor([0, 4, 4, 9, 0, 2])  # an item listed twice gets both values
    values = torch.randn(9, 6, generator=g, requires_grad=True)
    candidates = torch.tensor([4, 7, 4, 2, 14, 9])  # 4 twice; 7 and 14 maybe in no history
    got = HistoryLogits(ids, values).at(candidates)
    want = torch.stack([torch.stack([sum((values[r, j] for j in range(6) if ids[r, j] == c and c > 0),
                                         torch.tensor(0.0)) for c in candidates.tolist()]) for r in range(9)])
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    weights = torch.randn(9, 6, generator=g)
    grad_got, = torch.autograd.grad((got * weights).sum(), values)
    grad_want, = torch.autograd.grad((want * weights).sum(), values)
    torch.testing.assert_close(grad_got, grad_want, atol=1e-6, rtol=0)
