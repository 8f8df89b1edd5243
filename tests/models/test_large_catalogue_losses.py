"""Memory-bounded full CE and popularity-sampled CE: exactness against the materialised loss on every device
there is, chunk sizing from the memory budget, and logQ correction removing the sampled softmax's bias."""

from __future__ import annotations

import math

import pytest
import torch

from recsys.config import ConfigError
from recsys.models.losses import (
    FusedCrossEntropy,
    HistoryLogits,
    LossConfig,
    PopularitySampler,
    compute_loss,
    cross_entropy_chunk,
    full_ce,
    materialised_ce,
    sampled_ce,
)
from recsys.models.prior import log_prior, with_bias_column, with_unit_column

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")),
]

# float32 sums taken in another order (chunks, the softmax kernel, a GPU's matmul tiling): a few ulps of the
# largest term, stated once for every comparison below.
F32_TOL = dict(rtol=1e-4, atol=1e-5)


def _case(device: str, n: int = 300, n_items: int = 500, dim: int = 16, seed: int = 0,
          dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(n, dim, generator=g, dtype=dtype) * 0.7).to(device).requires_grad_()
    table = torch.randn(n_items + 1, dim, generator=g, dtype=dtype).to(device).requires_grad_()
    targets = torch.randint(1, n_items + 1, (n,), generator=g).to(device)
    return hidden, targets, table


def _history(n: int, n_items: int, length: int, device: str, seed: int) -> HistoryLogits:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, n_items + 1, (n, length), generator=g)  # some 0s: padding
    values = torch.randn(n, length, generator=g) * 2.0
    return HistoryLogits(ids.to(device), values.to(device).requires_grad_())


def _loss_and_grads(loss: torch.Tensor, wrt: list[torch.Tensor]) -> tuple[float, ...]:
    return (float(loss.detach()), *torch.autograd.grad(loss, wrt))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("chunk_mb", [1, 1024])  # 1 MB: 174 rows of 500 items, two chunks; 1024: one chunk
def test_chunked_full_ce_equals_the_materialised_loss_and_gradients(device: str, chunk_mb: int) -> None:
    hidden, targets, table = _case(device)
    got = _loss_and_grads(full_ce(hidden, targets, table, chunk_mb=chunk_mb), [hidden, table])
    want = _loss_and_grads(materialised_ce(hidden, targets, table), [hidden, table])
    assert got[0] == pytest.approx(want[0], rel=1e-5)
    for g, w in zip(got[1:], want[1:]):
        torch.testing.assert_close(g, w, **F32_TOL)
    assert torch.equal(got[2][0], torch.zeros_like(got[2][0]))  # the padding row is never a class


@pytest.mark.parametrize("device", DEVICES)
def test_chunked_full_ce_with_history_logits_is_exact(device: str) -> None:
    hidden, targets, table = _case(device, n=200, n_items=60)
    history = _history(200, 60, 7, device, seed=1)
    wrt = [hidden, table, history.values]
    got = _loss_and_grads(FusedCrossEntropy.apply(hidden, table[1:], targets - 1, 37, history.ids,
                                                  history.values), wrt)  # 37 rows: six chunks and a part
    want = _loss_and_grads(materialised_ce(hidden, targets, table, history), wrt)
    assert got[0] == pytest.approx(want[0], rel=1e-5)
    for g, w in zip(got[1:], want[1:]):
        torch.testing.assert_close(g, w, **F32_TOL)
    assert float(full_ce(hidden, targets, table, history).detach()) == pytest.approx(want[0], rel=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_chunked_full_ce_with_the_log_popularity_column_is_exact(device: str) -> None:
    # trainer.popularity_correction: one more dimension, 1 on the state side and log p(item) on the item side.
    hidden, targets, table = _case(device, n=250, n_items=400)
    counts = torch.randint(0, 1000, (400,), generator=torch.Generator().manual_seed(2))
    log_p = log_prior(counts).to(device)
    h, items = with_unit_column(hidden), with_bias_column(table, log_p)
    got = _loss_and_grads(full_ce(h, targets, items, chunk_mb=1), [hidden, table])
    want = _loss_and_grads(materialised_ce(h, targets, items), [hidden, table])
    assert got[0] == pytest.approx(want[0], rel=1e-5)
    for g, w in zip(got[1:], want[1:]):
        torch.testing.assert_close(g, w, **F32_TOL)


def test_chunked_full_ce_in_float64_agrees_to_float64_precision() -> None:
    hidden, targets, table = _case("cpu", dtype=torch.float64)
    got = _loss_and_grads(full_ce(hidden, targets, table, chunk_mb=1), [hidden, table])
    want = _loss_and_grads(materialised_ce(hidden, targets, table), [hidden, table])
    assert got[0] == pytest.approx(want[0], rel=1e-12)
    for g, w in zip(got[1:], want[1:]):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_inputs_take_the_softmax_in_float32(device: str) -> None:
    # bf16 logits over a large catalogue lose the target's probability; the loss comes out in float32, and
    # equals float32 CE on the same (bf16-rounded) inputs to within the bf16 rounding of the logits.
    hidden, targets, table = _case(device, n=64, n_items=5000, dtype=torch.bfloat16)
    loss = full_ce(hidden, targets, table)
    assert loss.dtype == torch.float32
    reference = materialised_ce(hidden.detach().float(), targets, table.detach().float())
    assert float(loss.detach()) == pytest.approx(float(reference), rel=2e-2)
    grad_hidden, = torch.autograd.grad(loss, [hidden])
    assert grad_hidden.dtype == torch.bfloat16 and torch.isfinite(grad_hidden.float()).all()


def test_chunk_size_follows_the_memory_budget() -> None:
    # An accelerator takes as many rows as the budget holds (12 bytes a logit), at least one.
    assert cross_entropy_chunk(1_000_000, "cuda", 1024) == (1024 << 20) // (1_000_000 * 12) == 89
    assert cross_entropy_chunk(27_278, "cuda", 1024) == 3280
    assert cross_entropy_chunk(10**9, "cuda", 1) == 1
    # The CPU keeps its cache-sized chunks (about 2 MB of logits, 32..1024 rows) within the budget.
    assert cross_entropy_chunk(3706, "cpu") == 141
    assert cross_entropy_chunk(1_000_000, "cpu") == 32
    assert cross_entropy_chunk(1_000_000, "cpu", 64) == 5  # a budget below 32 rows wins
    assert cross_entropy_chunk(100, "cpu") == 1024


def test_chunk_mb_is_a_validated_loss_option() -> None:
    assert LossConfig(chunk_mb=256).chunk_mb == 256
    with pytest.raises(ConfigError, match=r"^chunk_mb: must be at least 1, got 0$"):
        LossConfig(chunk_mb=0)


# -- popularity-sampled CE with logQ correction ----------------------------------------------------------


def _power_law_log_q(n_items: int, exponent: float = 1.1) -> torch.Tensor:
    """[n_items + 1] log q of a Zipf-like popularity, entry 0 a placeholder."""
    weights = torch.arange(1, n_items + 1, dtype=torch.float64) ** -exponent
    return torch.cat([torch.zeros(1, dtype=torch.float64), (weights / weights.sum()).log()])


def _mean_sampled_gradient(hidden: torch.Tensor, targets: torch.Tensor, table: torch.Tensor,
                           sampler: PopularitySampler, n_negatives: int, draws: int, correct: bool) -> torch.Tensor:
    generator = torch.Generator().manual_seed(11)
    total = torch.zeros_like(hidden)
    for _ in range(draws):
        loss = sampled_ce(hidden, targets, table, n_negatives, generator, sampler=sampler, logq_correction=correct)
        total += torch.autograd.grad(loss, [hidden])[0]
    return total / draws


def test_logq_corrected_popularity_sampling_approaches_the_full_softmax_gradient() -> None:
    # 200 items with Zipf popularity, 2,000 popularity-sampled negatives: with logQ correction the mean
    # sampled-softmax gradient w.r.t. the states (20 draws, seeded) is within 5% (relative L2) of full CE's
    # (measured: 3.4%); uncorrected, the popular items it draws again and again are over-weighted and the
    # gradient is off by over 20% (measured: 29.5%).
    n_items = 200
    hidden, targets, table = _case("cpu", n=40, n_items=n_items, dim=8, seed=5, dtype=torch.float64)
    sampler = PopularitySampler(_power_law_log_q(n_items))
    full = torch.autograd.grad(full_ce(hidden, targets, table), [hidden])[0]
    corrected = _mean_sampled_gradient(hidden, targets, table, sampler, 2000, draws=20, correct=True)
    uncorrected = _mean_sampled_gradient(hidden, targets, table, sampler, 2000, draws=20, correct=False)
    error = lambda g: float((g - full).norm() / full.norm())  # noqa: E731
    assert error(corrected) < 0.05
    assert error(uncorrected) > 0.20


def test_logq_correction_subtracts_the_log_expected_count() -> None:
    hidden = torch.tensor([[1.0, 0.0]])
    table = torch.tensor([[0.0, 0.0], [2.0, 0.0], [1.0, 0.0], [0.0, 0.0]])  # logits: item1=2, item2=1, item3=0
    log_q = torch.tensor([0.0, 0.5, 0.3, 0.2]).log()
    negatives = torch.tensor([2, 3, 3, 1])  # item 1 is the target: masked
    got = sampled_ce(hidden, torch.tensor([1]), table, 4, negatives=negatives, sampler=PopularitySampler(log_q))
    terms = [math.exp(1) / (4 * 0.3), math.exp(0) / (4 * 0.2), math.exp(0) / (4 * 0.2)]
    assert got.item() == pytest.approx(-math.log(math.exp(2) / (math.exp(2) + sum(terms))), rel=1e-6)


def test_popularity_sampler_draws_by_popularity_never_the_padding() -> None:
    log_q = log_prior(torch.tensor([0, 9, 90, 900]))  # add-one smoothed: shares 1, 10, 91, 901 of 1003
    draws = PopularitySampler(log_q).sample(200_000, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert int(draws.min()) >= 1 and int(draws.max()) <= 4
    shares = torch.bincount(draws, minlength=5)[1:].double() / draws.numel()
    # 200k draws: the binomial standard error of a share of 0.9 is 0.0007; 0.005 is over 7 of them.
    torch.testing.assert_close(shares, torch.tensor([1, 10, 91, 901], dtype=torch.float64) / 1003,
                               atol=5e-3, rtol=0)


def test_popularity_negatives_through_the_config() -> None:
    hidden, targets, table = _case("cpu", n=30, n_items=50)
    cfg = LossConfig(name="sampled_ce", n_negatives=64, negatives="popularity")
    sampler = PopularitySampler(log_prior(torch.arange(50)))
    loss = compute_loss(cfg, hidden, targets, table, torch.Generator().manual_seed(0), sampler=sampler)
    expected = sampled_ce(hidden, targets, table, 64, torch.Generator().manual_seed(0), sampler=sampler)
    torch.testing.assert_close(loss, expected)
    with pytest.raises(ValueError, match="needs the training items' popularity"):
        compute_loss(cfg, hidden, targets, table)
    with pytest.raises(ConfigError, match=r"^negatives: 'popularity' is only for sampled_ce, got name: gbce$"):
        LossConfig(name="gbce", negatives="popularity")


@pytest.mark.filterwarnings("ignore:.*self.trainer. reference is not registered")  # training_step outside a Trainer
def test_the_training_module_draws_popularity_negatives_from_its_log_q() -> None:
    from recsys.config import TrainerConfig
    from recsys.models import SASRec, SASRecConfig
    from recsys.training.module import RecommenderModule, log_popularity

    n_items = 6
    loss = LossConfig(name="sampled_ce", n_negatives=16, negatives="popularity")
    model = SASRec(n_items, SASRecConfig(max_len=4, hidden=8, n_layers=1, dropout=0.0, loss=loss)).eval()
    batch = {"input": torch.tensor([[0, 1, 2, 3], [4, 5, 1, 2]]), "target": torch.tensor([[0, 2, 3, 4], [5, 1, 2, 6]])}
    log_q = log_popularity([[1, 1, 1, 1, 2], [3, 4, 5, 6]], n_items)
    module = RecommenderModule(model, n_items, loss=loss, trainer_config=TrainerConfig(), negative_log_q=log_q)
    with torch.no_grad():
        torch.manual_seed(3)
        got = module.training_step(batch, 0)
        has_target = batch["target"] > 0
        torch.manual_seed(3)
        want = sampled_ce(model.encode(batch["input"])[has_target], batch["target"][has_target],
                          model.item_vectors(), 16, sampler=PopularitySampler(log_q))
    torch.testing.assert_close(got, want)
    without = RecommenderModule(model, n_items, loss=loss, trainer_config=TrainerConfig())
    with pytest.raises(ValueError, match="needs the training items' popularity"):
        without.training_step(batch, 0)


def test_training_with_popularity_negatives_end_to_end(tmp_path) -> None:
    # The real pipeline on ml-latest-small, cut short: train.py hands the module the training popularity.
    from pathlib import Path

    from recsys.run_config import load_run_config
    from recsys.training.train import train

    overrides = ["data.max_history=30", "model.max_len=30", "model.hidden=16", "model.n_layers=1",
                 "trainer.progress_bar=false", "trainer.threads=2", "trainer.max_epochs=1",
                 "tracking.enabled=false", f"tracking.output_dir={tmp_path / 'runs'}",
                 "model.loss=sampled_ce", "model.loss.negatives=popularity", "model.loss.n_negatives=128"]
    cfg = load_run_config(Path(__file__).parents[1] / "configs" / "sasrec_small.yaml", overrides)
    result = train(cfg)
    assert math.isfinite(result.metrics["test_ndcg@10"]) and result.metrics["test_ndcg@10"] > 0
