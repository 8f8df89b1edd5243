"""HSTU: shapes, causality in items, timestamps and query times, left-padding invariance, what the time bias
changes (and what it leaves alone without timestamps), the time buckets, NaN safety, learning, config and
registry."""

from __future__ import annotations

import math

import pytest
import torch

from recsys.config import from_dict, to_dict
from recsys.errors import ConfigError
from recsys.models import HSTU, MODELS, HSTUConfig, get_model_spec
from recsys.models.base import Objective
from recsys.models.hstu import bucket_time_gaps
from recsys.models.losses import LossConfig, compute_loss

N_ITEMS = 30
DAY = 86_400
T0 = 1_700_000_000  # a Unix time of today's size: float32 could not tell its seconds apart
# Float tolerance for states computed over tensors of different widths (padding) or by different code paths
# (the top block's single query): the same operations in another summation order; states are O(1) after the
# final LayerNorm, so 1e-5 is ~100 float32 roundings.
TOL = {"atol": 1e-5, "rtol": 1e-5}


def make_model(**overrides: object) -> HSTU:
    torch.manual_seed(0)
    settings = {"max_len": 12, "hidden": 16, "n_heads": 2, "attention_dim": 8, "linear_dim": 8, "n_layers": 2}
    config = HSTUConfig(**{**settings, **overrides})  # type: ignore[arg-type]
    model = HSTU(N_ITEMS, config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("time_weight", "position_weight")):
                # They start near 0 (std 0.02), where a test of what they change would measure noise; a
                # trained model's are of order 1.
                param.normal_(std=1.0)
            elif name.endswith("bias"):
                # Zero at the start, and with zero biases padding positions stay zero vectors through every
                # block: a missing padding mask would go unseen. A trained model's are not zero.
                param.normal_(std=0.1)
    return model


def left_pad(history: list[int], width: int) -> torch.Tensor:
    return torch.tensor([[0] * (width - len(history)) + history])


def times_of(gaps: list[int], width: int) -> torch.Tensor:
    """Left-padded timestamps [1, width]: T0 then the given gaps between consecutive items, 0 at padding."""
    stamps = [T0]
    for gap in gaps:
        stamps.append(stamps[-1] + gap)
    return torch.tensor([[0] * (width - len(stamps)) + stamps])


HISTORY = [5, 9, 2, 7, 3]
GAPS = [60, DAY, 3_600, 7 * DAY]  # between HISTORY's items


def test_shapes() -> None:
    model = make_model()
    items = torch.randint(1, N_ITEMS + 1, (4, 7))
    stamps = T0 + torch.arange(7).expand(4, 7) * DAY
    assert model.encode(items).shape == (4, 7, 16)
    assert model.encode(items, stamps).shape == (4, 7, 16)
    assert model.encode(items, stamps, stamps + 1).shape == (4, 7, 16)
    assert model(items, stamps).shape == (4, 7, 16)
    assert model.user_vector(items).shape == (4, 16)
    assert model.user_vector(items, stamps, stamps[:, -1] + DAY).shape == (4, 16)
    assert model.item_vectors().shape == (N_ITEMS + 1, 16)
    assert model.score(items, stamps).shape == (4, N_ITEMS + 1)
    assert model.uses_timestamps
    assert model.objective() == Objective("shift", loss=LossConfig(name="ce", n_negatives=256, gbce_t=0.75))


@pytest.mark.parametrize("changed", ["item", "timestamp", "query_time"])
def test_causality_later_inputs_do_not_change_earlier_states(changed: str) -> None:
    model = make_model()
    items, stamps = left_pad(HISTORY, 8), times_of(GAPS, 8)
    queries = torch.cat([stamps[:, 1:], stamps[:, -1:] + DAY], dim=1)  # what training passes: the next times
    after = {"item": items.clone(), "timestamp": stamps.clone(), "query_time": queries.clone()}
    if changed == "item":
        after["item"][0, 5] = 11
    elif changed == "timestamp":
        after["timestamp"][0, 5] -= DAY // 2  # still after position 4's
    else:
        after["query_time"][0, 5] += 30 * DAY
    before = model.encode(items, stamps, queries)
    later = model.encode(after["item"], after["timestamp"], after["query_time"])
    torch.testing.assert_close(before[:, :5], later[:, :5], atol=0, rtol=0)  # same inputs, same operations
    assert not torch.allclose(before[:, 5:], later[:, 5:], **TOL)


def test_without_query_times_each_position_is_asked_at_the_next_timestamp() -> None:
    # Position t's query time is then timestamps[t+1] (the last position: its own timestamp), so a timestamp
    # reaches one position back, and no further.
    model = make_model()
    items, stamps = left_pad(HISTORY, 8), times_of(GAPS, 8)
    next_times = torch.cat([stamps[:, 1:], stamps[:, -1:]], dim=1)
    torch.testing.assert_close(model.encode(items, stamps), model.encode(items, stamps, next_times), atol=0, rtol=0)
    moved = stamps.clone()
    moved[0, 6] -= 600
    before, after = model.encode(items, stamps), model.encode(items, moved)
    torch.testing.assert_close(before[:, :5], after[:, :5], atol=0, rtol=0)
    assert not torch.allclose(before[:, 5], after[:, 5], **TOL)


def test_each_state_equals_the_user_vector_of_its_prefix_asked_at_its_query_time() -> None:
    # Training scores encode's state t against the item that came at query_times[t]; serving asks
    # user_vector(history so far, at=now). The two must agree, or training fits another function.
    model = make_model()
    stamps = times_of(GAPS, 5)[0].tolist()
    queries = stamps[1:] + [stamps[-1] + DAY]
    states = model.encode(left_pad(HISTORY, 8), torch.tensor([[0] * 3 + stamps]), torch.tensor([[0] * 3 + queries]))[0]
    for t in range(1, len(HISTORY) + 1):
        prefix = model.user_vector(left_pad(HISTORY[:t], 8), torch.tensor([[0] * (8 - t) + stamps[:t]]),
                                   at=torch.tensor([queries[t - 1]]))[0]
        torch.testing.assert_close(states[8 - len(HISTORY) + t - 1], prefix, **TOL)


@pytest.mark.parametrize("n_layers", [1, 3])
@pytest.mark.parametrize("with_times", [False, True])
def test_user_vector_equals_the_last_state_of_encode(n_layers: int, with_times: bool) -> None:
    # user_vector's top block computes only the last query; rows with no padding, some, and only padding.
    model = make_model(n_layers=n_layers)
    rows = [[], [7], [3, 1, 4], [2, 7, 1, 8, 2, 8, 1, 8], list(range(1, 13))]
    items = torch.cat([left_pad(row, 12) for row in rows])
    stamps = torch.where(items > 0, T0 + torch.arange(12) * 5_000, 0) if with_times else None
    torch.testing.assert_close(model.user_vector(items, stamps), model.encode(items, stamps)[:, -1], **TOL)


@pytest.mark.parametrize("with_times", [False, True])
def test_left_padding_invariance(with_times: bool) -> None:
    model = make_model()
    short_items, short_times = left_pad(HISTORY, 5), times_of(GAPS, 5)
    long_items, long_times = left_pad(HISTORY, 12), times_of(GAPS, 12)
    if not with_times:
        short_times = long_times = None  # type: ignore[assignment]
    torch.testing.assert_close(model.encode(short_items, short_times), model.encode(long_items, long_times)[:, 7:],
                               **TOL)
    long = model.user_vector(long_items, long_times)
    torch.testing.assert_close(model.user_vector(short_items, short_times), long, **TOL)
    # Also within one batch, next to a longer sequence.
    other = torch.randint(1, N_ITEMS + 1, (1, 12))
    batch = torch.cat([long_items, other])
    batch_times = None if long_times is None else torch.cat([long_times, T0 + torch.arange(12)[None] * DAY])
    torch.testing.assert_close(model.user_vector(batch, batch_times)[:1], long, **TOL)


def test_the_time_bias_changes_user_vectors_only_when_on() -> None:
    items = left_pad(HISTORY, 8)
    spread, packed = times_of(GAPS, 8), times_of([1, 2, 1, 3], 8)  # weeks apart vs within seconds
    on, off = make_model(), make_model(time_bias=False)
    assert not torch.allclose(on.user_vector(items, spread), on.user_vector(items, packed), **TOL)
    # Off, timestamps are never read: the same operations on the same numbers.
    assert torch.equal(off.user_vector(items, spread), off.user_vector(items, packed))
    assert torch.equal(off.encode(items, spread), off.encode(items))


def test_timestamps_none_runs_the_time_free_path() -> None:
    # Without timestamps a model with the time bias computes what the same weights compute without it.
    with_bias, without = make_model(), make_model(time_bias=False)
    result = without.load_state_dict(with_bias.state_dict(), strict=False)
    assert not result.missing_keys
    assert sorted(result.unexpected_keys) == [f"blocks.{i}.time_weight" for i in range(2)]
    items = torch.cat([left_pad(HISTORY, 8), left_pad([4, 4, 8], 8), left_pad([], 8)])
    stamps = torch.where(items > 0, T0 + torch.arange(8) * DAY, 0)
    torch.testing.assert_close(with_bias.encode(items), without.encode(items, stamps), atol=0, rtol=0)
    torch.testing.assert_close(with_bias.user_vector(items), without.user_vector(items, stamps), atol=0, rtol=0)
    assert not torch.allclose(with_bias.user_vector(items, stamps), with_bias.user_vector(items), **TOL)


def test_user_vector_depends_on_when_it_is_asked() -> None:
    items, stamps = left_pad(HISTORY, 8), times_of(GAPS, 8)
    last = stamps[:, -1]
    model = make_model()
    torch.testing.assert_close(model.user_vector(items, stamps), model.user_vector(items, stamps, at=last),
                               atol=0, rtol=0)  # at=None is "asked at the last interaction"
    an_hour, a_year = model.user_vector(items, stamps, last + 3_600), model.user_vector(items, stamps, last + 365 * DAY)
    assert not torch.allclose(an_hour, a_year, **TOL)
    # 1 s and 50 s after the last item: buckets 0 and 13 apart from it, on T0-sized times (gaps in float64)
    assert not torch.allclose(model.user_vector(items, stamps, last + 1), model.user_vector(items, stamps, last + 50),
                              **TOL)
    off = make_model(time_bias=False)
    assert torch.equal(off.user_vector(items, stamps, last + 3_600), off.user_vector(items, stamps, last + 365 * DAY))


def test_time_buckets_of_known_gaps() -> None:
    # As HSTUConfig.time_bucket_width documents: floor(ln(max(|gap|, 1 s)) / 0.301), at most 128.
    gaps = torch.tensor([0, 1, 60, 3_600, DAY, 7 * DAY, 365 * DAY, -DAY, 10**17])
    expected = [0, 0, 13, 27, 37, 44, 57, 37, 128]
    assert bucket_time_gaps(gaps).tolist() == expected
    assert bucket_time_gaps(gaps.double()).tolist() == expected
    assert bucket_time_gaps(torch.tensor([DAY]), n_buckets=20).tolist() == [20]  # longer gaps share the last
    assert bucket_time_gaps(torch.tensor([DAY]), width=math.log(2)).tolist() == [16]  # 2^16 <= 86,400 < 2^17
    # Gaps between Unix times of today's size, subtracted in float64, keep their seconds.
    assert bucket_time_gaps(torch.tensor([T0 + 2]).double() - torch.tensor([T0]).double()).tolist() == [2]


def test_ablations_drop_their_tables() -> None:
    names = {name for name, _ in make_model(time_bias=False, position_bias=False).named_parameters()}
    assert not any(name.endswith(("time_weight", "position_weight")) for name in names)
    full = {name: p.shape for name, p in make_model().named_parameters()}
    assert full["blocks.0.time_weight"] == (129,) and full["blocks.0.position_weight"] == (12,)
    plain = make_model(time_bias=False, position_bias=False)
    assert torch.isfinite(plain.user_vector(left_pad(HISTORY, 8), times_of(GAPS, 8))).all()


def test_no_nan_with_heavy_padding() -> None:
    model = make_model().train()
    items = torch.zeros(3, 12, dtype=torch.long)
    items[1, -1] = 7  # one real item
    items[2, -2:] = torch.tensor([2, 9])  # row 0: nothing but padding (a cold user)
    stamps = torch.where(items > 0, T0 + torch.arange(12) * DAY, 0)
    states = model.encode(items, stamps)
    assert torch.isfinite(states).all()
    states[items > 0].sum().backward()
    for name, param in model.named_parameters():
        assert param.grad is None or torch.isfinite(param.grad).all(), name
    model.eval()
    assert torch.isfinite(model.score(items, stamps)).all()
    assert torch.isfinite(model.score(items)).all()


def test_padding_rows_are_zero_and_padding_gets_no_gradient() -> None:
    model = make_model().train()
    assert torch.equal(model.item_vectors()[0], torch.zeros(16))
    assert torch.equal(model.pos_emb.weight[0], torch.zeros(16))
    items = torch.tensor([[0, 0, 1, 2, 3]])
    model.score(items, torch.where(items > 0, T0 + torch.arange(5), 0))[:, 1:].sum().backward()
    assert torch.equal(model.item_emb.weight.grad[0], torch.zeros(16))


def train_steps(model: HSTU, items: torch.Tensor, stamps: torch.Tensor | None, queries: torch.Tensor | None,
                targets: torch.Tensor, steps: int, lr: float = 0.01) -> tuple[float, float]:
    """(first, last) full-softmax loss over `steps` Adam steps on one fixed batch."""
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        states = model.encode(items, stamps, queries)
        has_target = targets > 0
        loss = compute_loss(LossConfig(), states[has_target], targets[has_target], model.item_vectors())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses[0], losses[-1]


def test_gradient_steps_lower_the_loss_on_a_toy_next_item_task() -> None:
    # Each user walks the catalogue in steps of one from a different start: the next item is the last + 1.
    model = make_model(dropout=0.0)
    starts = torch.arange(16)
    walk = (starts[:, None] + torch.arange(9)) % N_ITEMS + 1  # [16, 9]
    stamps = T0 + torch.arange(9) * DAY
    first, last = train_steps(model, walk[:, :-1], stamps[:-1].expand(16, 8), stamps[1:].expand(16, 8), walk[:, 1:],
                              steps=40)
    assert first > math.log(N_ITEMS) - 0.5  # starts near chance (ln 30 = 3.4)
    assert last < first / 3


def test_the_time_bias_learns_what_only_the_query_time_tells() -> None:
    # Same items, same timestamps; the target is item 1 when asked within a minute of the last item and
    # item 2 when asked a month later. Without the time bias the two cases are one input, so no model beats
    # predicting each half the time (loss ln 2); with it they separate.
    items = torch.tensor([[0, 0, 3, 4, 5]]).repeat(8, 1)
    stamps = torch.where(items > 0, T0 + torch.arange(5) * 3_600, 0)
    soon = torch.arange(8) % 2 == 0
    asked = stamps[:, -1] + torch.where(soon, 30, 30 * DAY)
    queries = torch.cat([stamps[:, 1:], asked[:, None]], dim=1)
    targets = torch.zeros_like(items)
    targets[:, -1] = torch.where(soon, 1, 2)  # only the last position has a target
    _, with_time = train_steps(make_model(dropout=0.0), items, stamps, queries, targets, steps=60)
    _, without = train_steps(make_model(dropout=0.0, time_bias=False), items, stamps, queries, targets, steps=60)
    assert without > math.log(2) - 1e-3  # the bound, up to float rounding of the loss
    assert with_time < 0.2


def test_bad_inputs_raise() -> None:
    model = make_model()
    items, stamps = left_pad(HISTORY, 8), times_of(GAPS, 8)
    with pytest.raises(ValueError, match="max_len 12"):
        model.encode(torch.ones(1, 13, dtype=torch.long))
    with pytest.raises(ValueError, match="timestamps must have the items' shape"):
        model.encode(items, stamps[:, 1:])
    with pytest.raises(ValueError, match="query_times must have the items' shape"):
        model.encode(items, stamps, stamps[:, 1:])
    with pytest.raises(ValueError, match="query_times without timestamps"):
        model.encode(items, None, stamps)
    with pytest.raises(ValueError, match=r"at must be \[batch\]"):
        model.user_vector(items, stamps, stamps)
    with pytest.raises(ValueError, match="at without timestamps"):
        model.user_vector(items, None, stamps[:, -1])
    with pytest.raises(ValueError, match="n_items"):
        HSTU(0, HSTUConfig())


def test_config_validation_and_round_trip() -> None:
    config = from_dict(HSTUConfig, {"n_layers": 8, "n_heads": 2, "attention_dim": 32, "linear_dim": 32,
                                    "time_bias": False, "time_bucket_width": 0.5, "loss": "gbce"}, "model")
    assert from_dict(HSTUConfig, to_dict(config)) == config
    with pytest.raises(ConfigError, match="model.loss"):
        from_dict(HSTUConfig, {"loss": "hinge"}, "model")
    with pytest.raises(ConfigError, match="model.time_bias: expected true or false"):
        from_dict(HSTUConfig, {"time_bias": "yes"}, "model")
    # the key is named in full (the model's own check said "model: attention_dim must be at least 1, got 0")
    with pytest.raises(ConfigError, match=r"^model\.attention_dim: must be at least 1, got 0$"):
        from_dict(HSTUConfig, {"attention_dim": 0}, "model")
    with pytest.raises(ConfigError, match=r"^model\.time_bucket_width: must be greater than 0, got 0\.0$"):
        from_dict(HSTUConfig, {"time_bucket_width": 0}, "model")
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(HSTUConfig, {"n_items": 10}, "model")


def test_registry() -> None:
    assert MODELS["hstu"] == (HSTU, HSTUConfig)
    assert get_model_spec("hstu") == (HSTU, HSTUConfig)
