"""GRU4Rec: shapes, causality, left-padding invariance, the score contract, config and registry, and
learning a toy pattern with each loss."""

from __future__ import annotations

import pytest
import torch

from recsys.config import from_dict, to_dict
from recsys.data.batches import shift_batch
from recsys.errors import ConfigError
from recsys.models import MODELS, GRU4Rec, GRU4RecConfig, get_model_spec
from recsys.models.losses import compute_loss

N_ITEMS = 30


def make_model(**overrides: object) -> GRU4Rec:
    torch.manual_seed(0)
    config = GRU4RecConfig(**{"max_len": 12, "hidden": 16, "n_layers": 2, **overrides})  # type: ignore[arg-type]
    return GRU4Rec(N_ITEMS, config).eval()


def left_pad(history: list[int], width: int) -> torch.Tensor:
    return torch.tensor([[0] * (width - len(history)) + history])


def test_shapes() -> None:
    model = make_model()
    items = torch.randint(1, N_ITEMS + 1, (4, 7))
    assert model.encode(items).shape == (4, 7, 16)
    assert model(items).shape == (4, 7, 16)
    assert model.user_vector(items).shape == (4, 16)
    assert model.item_vectors().shape == (N_ITEMS + 1, 16)
    assert model.score(items).shape == (4, N_ITEMS + 1)
    assert model.objective().batches == "shift"


def test_score_is_user_vector_times_item_vectors() -> None:
    model = make_model()
    items = torch.randint(0, N_ITEMS + 1, (5, 12))
    torch.testing.assert_close(model.score(items), model.user_vector(items) @ model.item_vectors().T)
    torch.testing.assert_close(model.item_vectors()[0], torch.zeros(16))


@pytest.mark.parametrize("n_layers", [1, 2])
def test_left_padding_invariance(n_layers: int) -> None:
    # A GRU that read the padding first would start the history from a different state.
    model = make_model(n_layers=n_layers)
    history = [3, 1, 4, 1, 5]
    short = model.user_vector(left_pad(history, 5))
    long = model.user_vector(left_pad(history, 12))
    torch.testing.assert_close(short, long, atol=1e-6, rtol=1e-6)
    batch = torch.cat([left_pad(history, 12), torch.randint(1, N_ITEMS + 1, (1, 12)), left_pad([7], 12)])
    vectors = model.user_vector(batch)
    torch.testing.assert_close(vectors[:1], long, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(vectors[2:], model.user_vector(left_pad([7], 1)), atol=1e-6, rtol=1e-6)


def test_states_are_causal_and_equal_the_user_vector_of_each_prefix() -> None:
    model = make_model()
    history = [4, 8, 15, 16, 23]
    states = model.encode(left_pad(history, 8))[0]  # [8, hidden]
    for t in range(1, len(history) + 1):
        prefix = model.user_vector(left_pad(history[:t], 8))[0]
        torch.testing.assert_close(states[8 - len(history) + t - 1], prefix, atol=1e-6, rtol=1e-6)


def test_no_nan_for_cold_users() -> None:
    model = make_model().train()
    items = torch.zeros(2, 12, dtype=torch.long)
    items[1, -1] = 7
    states = model.encode(items)
    assert torch.isfinite(states).all()
    states[items > 0].sum().backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_bad_inputs_raise() -> None:
    model = make_model()
    with pytest.raises(ValueError, match="max_len"):
        model.encode(torch.ones(1, 13, dtype=torch.long))
    with pytest.raises(ValueError, match="batch, seq_len"):
        model.encode(torch.ones(13, dtype=torch.long))


def test_config_validation_and_round_trip() -> None:
    with pytest.raises(ValueError, match="dropout_hidden"):
        GRU4RecConfig(dropout_hidden=1.0)
    with pytest.raises(ValueError, match="n_layers"):
        GRU4RecConfig(n_layers=0)
    config = GRU4RecConfig(hidden=32, loss={"name": "gbce", "n_negatives": 64})
    assert from_dict(GRU4RecConfig, to_dict(config), "model") == config
    with pytest.raises(ConfigError, match="loss"):
        from_dict(GRU4RecConfig, {"loss": "bpr"}, "model")


def test_registry() -> None:
    assert MODELS["gru4rec"] == (GRU4Rec, GRU4RecConfig)
    assert get_model_spec("gru4rec") == (GRU4Rec, GRU4RecConfig)


@pytest.mark.parametrize("loss", ["ce", "sampled_ce", "bce", "gbce"])
def test_learns_a_toy_pattern(loss: str) -> None:
    # Every sequence counts up by one (mod n): the next item follows from the last one.
    torch.manual_seed(0)
    n_items = 20
    model = GRU4Rec(n_items, GRU4RecConfig(max_len=8, hidden=32, dropout_hidden=0.0,
                                            loss={"name": loss, "n_negatives": 16, "gbce_t": 0.75}))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    starts = torch.randint(0, n_items, (64, 1))
    windows = (starts + torch.arange(9)) % n_items + 1  # [64, max_len + 1]
    windows[:16, :4] = 0  # some shorter, left-padded windows
    batch = shift_batch(windows)
    has_target = batch["target"] > 0
    losses = []
    for _ in range(100):
        hidden = model.encode(batch["input"])
        value = compute_loss(model.config.loss, hidden[has_target], batch["target"][has_target], model.item_vectors())
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        losses.append(value.item())
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10
    model.eval()
    assert int(model.score(torch.tensor([[3, 4, 5, 6, 7]]))[0, 1:].argmax()) + 1 == 8  # the next one up
