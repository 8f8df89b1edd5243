"""Next-item losses: exact values against manual formulas, sampling rules, seeding, and that they train."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from recsys.models import SASRec, SASRecConfig
from recsys.models.losses import (
    LOSSES,
    LossConfig,
    SoftmaxLossConfig,
    bce,
    compute_loss,
    full_ce,
    gbce,
    gbce_beta,
    per_position_logits,
    sampled_ce,
)

N_ITEMS, DIM, N = 12, 8, 10


@pytest.fixture
def inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    hidden = torch.randn(N, DIM, requires_grad=True)
    table = torch.randn(N_ITEMS + 1, DIM, requires_grad=True)
    targets = torch.randint(1, N_ITEMS + 1, (N,))
    return hidden, targets, table


def test_full_ce_equals_manual_log_softmax(inputs: tuple[torch.Tensor, ...]) -> None:
    hidden, targets, table = inputs
    logits = hidden @ table.T
    logits[:, 0] = float("-inf")  # padding is not a class
    expected = -torch.log_softmax(logits, dim=1)[torch.arange(N), targets].mean()
    torch.testing.assert_close(full_ce(hidden, targets, table), expected)


@pytest.mark.parametrize("name", LOSSES)
def test_losses_finite_and_never_touch_the_padding_row(name: str, inputs: tuple[torch.Tensor, ...]) -> None:
    hidden, targets, table = inputs
    loss = compute_loss(LossConfig(name=name, n_negatives=5, gbce_t=0.75), hidden, targets, table)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert torch.equal(table.grad[0], torch.zeros(DIM))
    assert torch.isfinite(hidden.grad).all()


def test_sampled_ce_with_every_item_as_negative_equals_full_ce(inputs: tuple[torch.Tensor, ...]) -> None:
    # The target also appears among the negatives; its duplicate is masked, so this is the full softmax.
    hidden, targets, table = inputs
    every_item = torch.arange(1, N_ITEMS + 1)
    got = sampled_ce(hidden, targets, table, n_negatives=N_ITEMS, negatives=every_item)
    torch.testing.assert_close(got, full_ce(hidden, targets, table))


def test_sampled_ce_manual_value_with_an_accidental_hit() -> None:
    hidden = torch.tensor([[1.0, 0.0]])
    table = torch.tensor([[0.0, 0.0], [2.0, 0.0], [1.0, 0.0], [0.0, 0.0]])  # logits: item1=2, item2=1, item3=0
    targets = torch.tensor([1])
    negatives = torch.tensor([1, 2, 3, 3])  # item 1 is the target: masked
    expected = -math.log(math.exp(2) / (math.exp(2) + math.exp(1) + 2 * math.exp(0)))
    got = sampled_ce(hidden, targets, table, n_negatives=4, negatives=negatives)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_bce_manual_value_and_hit_dropped() -> None:
    hidden = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    table = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, -1.0], [0.5, 3.0]])
    targets = torch.tensor([1, 3])  # s+ = 2 and 3
    negatives = torch.tensor([2, 3])  # s- = 0 for row 0; row 1's negative is its own target: dropped
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731  softplus
    expected = ((sp(-2) + sp(0)) + sp(-3)) / 2
    assert bce(hidden, targets, table, negatives=negatives).item() == pytest.approx(expected, rel=1e-6)


def test_gbce_beta_formula() -> None:
    # beta = alpha * (t * (1 - 1/alpha) + 1/alpha), alpha = k / (n_items - 1)
    alpha = 256 / (1001 - 1)
    assert gbce_beta(256, 1001, 0.75) == pytest.approx(alpha * (0.75 * (1 - 1 / alpha) + 1 / alpha))
    assert gbce_beta(256, 1001, 0.0) == pytest.approx(1.0)
    assert gbce_beta(256, 1001, 1.0) == pytest.approx(alpha)
    assert gbce_beta(50, 11, 0.9) == pytest.approx(1.0)  # alpha capped at 1: the sample covers the catalogue
    with pytest.raises(ValueError, match="n_items=1"):
        gbce_beta(1, 1, 0.5)
    with pytest.raises(ValueError, match="t must be in"):
        gbce_beta(1, 10, 1.5)


def test_gbce_manual_value(inputs: tuple[torch.Tensor, ...]) -> None:
    hidden, targets, table = inputs
    negatives = torch.tensor([1, 4, 4, 9]).repeat(N, 1)  # [N, 4]
    negatives[targets == 4, 0] = 4  # more accidental hits
    t = 0.6
    beta = gbce_beta(4, N_ITEMS, t)
    total = 0.0
    for i in range(N):
        s_pos = float(hidden[i].detach() @ table[targets[i]].detach())
        term = -beta * math.log(1 / (1 + math.exp(-s_pos)))  # -log(sigmoid(s+) ** beta)
        for j in negatives[i].tolist():
            if j != int(targets[i]):
                s_neg = float(hidden[i].detach() @ table[j].detach())
                term += -math.log(1 - 1 / (1 + math.exp(-s_neg)))
        total += term / (negatives.shape[1] + 1)
    got = gbce(hidden, targets, table, n_negatives=4, t=t, negatives=negatives)
    assert got.item() == pytest.approx(total / N, rel=1e-5)


def test_gbce_positive_term_matches_the_reference_transformed_logit() -> None:
    # The reference feeds BCE the logit log(1 / (sigmoid(s)^-beta - 1)), whose sigmoid is sigmoid(s)^beta.
    s = torch.linspace(-6, 6, 25, dtype=torch.float64)
    beta = 0.3
    transformed = torch.log(1 / (torch.sigmoid(s) ** -beta - 1))
    reference = F.binary_cross_entropy_with_logits(transformed, torch.ones_like(s), reduction="none")
    torch.testing.assert_close(beta * F.softplus(-s), reference)


def test_gbce_with_t0_and_one_negative_is_half_of_bce(inputs: tuple[torch.Tensor, ...]) -> None:
    hidden, targets, table = inputs
    negatives = torch.randint(1, N_ITEMS + 1, (N,))
    got = gbce(hidden, targets, table, n_negatives=1, t=0.0, negatives=negatives.unsqueeze(1))
    expected = bce(hidden, targets, table, negatives=negatives) / 2
    torch.testing.assert_close(got, expected)


def test_per_position_logits_paths_agree() -> None:
    torch.manual_seed(0)
    hidden = torch.randn(6, 4)
    ids = torch.randint(0, 50, (6, 3))
    small = torch.randn(10, 4)  # 10 rows <= 3 * 4: the full-product path
    big = torch.randn(50, 4)  # 50 rows > 12: the gather path
    for table in (small, big):
        ids_in = ids % table.shape[0]
        manual = torch.stack([torch.stack([hidden[i] @ table[j] for j in ids_in[i]]) for i in range(6)])
        torch.testing.assert_close(per_position_logits(hidden, table, ids_in), manual)


@pytest.mark.parametrize("name", ["sampled_ce", "bce", "gbce"])
def test_seeded_sampling_is_reproducible(name: str, inputs: tuple[torch.Tensor, ...]) -> None:
    hidden, targets, table = inputs

    def run(seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return compute_loss(LossConfig(name=name, n_negatives=3, gbce_t=0.5), hidden, targets, table, generator)

    assert torch.equal(run(7), run(7))
    assert not torch.equal(run(7), run(8))


def test_compute_loss_dispatches_and_rejects(inputs: tuple[torch.Tensor, ...]) -> None:
    hidden, targets, table = inputs
    torch.testing.assert_close(compute_loss(LossConfig(), hidden, targets, table), full_ce(hidden, targets, table))
    negatives = LossConfig(name="gbce", n_negatives=5, gbce_t=0.5)
    generator = torch.Generator().manual_seed(1)
    expected = gbce(hidden, targets, table, 5, 0.5, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(compute_loss(negatives, hidden, targets, table, generator), expected)
    # An unknown name never reaches the dispatch: the config refuses it, naming the registered ones.
    with pytest.raises(ValueError, match=r"^name: 'hinge' is not one of 'ce', 'sampled_ce', 'bce', 'gbce'$"):
        LossConfig(name="hinge")
    with pytest.raises(ValueError, match=r"1\.\.12, got values in 0\.\."):
        full_ce(hidden, torch.zeros(N, dtype=torch.long), table)
    with pytest.raises(ValueError, match="targets"):
        full_ce(hidden, targets[:3], table)
    with pytest.raises(ValueError, match="dim"):
        full_ce(hidden, targets, table[:, :4])


def _cyclic_batch(generator: torch.Generator, n_items: int = 16, batch: int = 32, length: int = 9) -> torch.Tensor:
    """Runs i, i+1, i+2, ... (mod n_items, ids 1..n_items), with random left padding."""
    starts = torch.randint(0, n_items, (batch, 1), generator=generator)
    seqs = (starts + torch.arange(length)) % n_items + 1  # [batch, length]
    n_pad = torch.randint(0, length - 2, (batch, 1), generator=generator)
    return seqs.masked_fill(torch.arange(length) < n_pad, 0)


@pytest.mark.parametrize("name", LOSSES)
def test_each_loss_trains_a_tiny_sasrec(name: str) -> None:
    torch.manual_seed(0)
    n_items = 16
    model = SASRec(n_items, SASRecConfig(max_len=8, hidden=16, n_layers=1, dropout=0.0))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(60):
        seqs = _cyclic_batch(generator, n_items)
        inputs, targets = seqs[:, :-1], seqs[:, 1:]
        valid = inputs > 0  # only positions with an input and a target enter the loss
        hidden = model.encode(inputs)[valid]  # [n_valid, hidden]
        loss = compute_loss(LossConfig(name=name, n_negatives=4, gbce_t=0.75), hidden, targets[valid],
                            model.item_vectors(), generator)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    # And the pattern is learnt: after a, a+1, a+2 comes a+3 (mod 16), for most starting items a.
    model.eval()
    probes = torch.tensor([[0, 0, 0, 0, 0, a, a % n_items + 1, (a + 1) % n_items + 1] for a in range(1, n_items + 1)])
    predicted = model.score(probes)[:, 1:].argmax(dim=1) + 1
    accuracy = (predicted == probes[:, -1] % n_items + 1).float().mean().item()
    assert accuracy >= 0.75


def test_fused_cross_entropy_matches_materialised_logits() -> None:
    from recsys.models.losses import FusedCrossEntropy

    generator = torch.Generator().manual_seed(3)
    hidden = torch.randn(700, 16, generator=generator)
    hidden[:4] *= 60  # logits hundreds apart: the targets' softmax probabilities underflow float32
    hidden.requires_grad_()
    table = torch.randn(51, 16, generator=generator, requires_grad=True)
    targets = torch.randint(0, 51, (700,), generator=generator)

    # An upstream gradient other than 1 (a loss weight): the gradients computed ahead must be scaled by it.
    expected = 2.5 * torch.nn.functional.cross_entropy(hidden @ table.T, targets)
    expected.backward()
    want_hidden, want_table = hidden.grad.clone(), table.grad.clone()
    hidden.grad, table.grad = None, None

    got = 2.5 * FusedCrossEntropy.apply(hidden, table, targets, 128)  # 700 rows: 5 full chunks and a partial one
    got.backward()
    # float32 sums in another order (chunks, softmax kernel): torch's default float32 tolerance (rtol 1.3e-6)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(hidden.grad, want_hidden)
    torch.testing.assert_close(table.grad, want_table)


def test_full_ce_without_gradients_gives_the_same_value() -> None:
    generator = torch.Generator().manual_seed(4)
    hidden = torch.randn(300, 8, generator=generator, requires_grad=True)
    table = torch.randn(40, 8, generator=generator, requires_grad=True)
    targets = torch.randint(1, 40, (300,), generator=generator)
    with torch.no_grad():
        plain = full_ce(hidden, targets, table)  # the value-only path: no gradient work
    torch.testing.assert_close(plain, full_ce(hidden, targets, table).detach())


def test_the_loss_config_is_the_registry_and_written_either_way() -> None:
    from typing import get_args

    assert get_args(LossConfig.model_fields["name"].annotation) == tuple(LOSSES)
    softmax = tuple(name for name, loss in LOSSES.items() if loss.softmax)
    assert get_args(SoftmaxLossConfig.model_fields["name"].annotation) == softmax == ("ce", "sampled_ce")
    # The name alone is the shorthand of the mapping; options keep their defaults.
    assert SASRecConfig(loss="bce").loss == LossConfig(name="bce") == LossConfig(name="bce", n_negatives=256)
    assert SASRecConfig(loss={"name": "sampled_ce", "n_negatives": 512}).loss.n_negatives == 512
    with pytest.raises(ValueError, match=r"^loss\.n_negatives: must be at least 1, got 0$"):
        SASRecConfig(loss={"name": "sampled_ce", "n_negatives": 0})
    with pytest.raises(ValueError, match=r"^loss\.gbce_t: must be in \[0, 1\], got 1\.5$"):
        SASRecConfig(loss={"name": "gbce", "gbce_t": 1.5})
