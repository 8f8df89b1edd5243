"""Mamba4Rec: the chunked scan against the sequential definition, causality, left-padding invariance, NaN
safety, learning a real signal, the score contract, saving and loading, config and registry."""

from __future__ import annotations

import pytest
import torch

from recsys.config import from_dict, to_dict
from recsys.errors import ConfigError
from recsys.models import MODELS, Mamba, MambaConfig, get_model_spec
from recsys.models.mamba import selective_scan, selective_scan_reference

N_ITEMS = 30
# float32 states of a few dozen steps, summed in another order by the chunked scan: 1e-5 is ~100 float32 ulps
# of values of order 1.
ATOL = 1e-5


def make_model(**overrides: object) -> Mamba:
    torch.manual_seed(0)
    config = MambaConfig(**{"max_len": 12, "hidden": 16, "d_state": 4, "n_layers": 2, **overrides})  # type: ignore[arg-type]
    return Mamba(N_ITEMS, config).eval()


def left_pad(history: list[int], width: int) -> torch.Tensor:
    return torch.tensor([[0] * (width - len(history)) + history])


def scan_inputs(seq_len: int) -> tuple[torch.Tensor, ...]:
    """Random scan inputs in float64, with steps large enough that the state forgets within a few positions
    and small enough that it carries across chunk boundaries."""
    gen = torch.Generator().manual_seed(3)
    batch, inner, d_state = 3, 5, 4
    x = torch.randn(batch, seq_len, inner, generator=gen, dtype=torch.float64)
    dt = torch.rand(batch, seq_len, inner, generator=gen, dtype=torch.float64) * 0.5
    A = -torch.rand(inner, d_state, generator=gen, dtype=torch.float64) * 4
    B = torch.randn(batch, seq_len, d_state, generator=gen, dtype=torch.float64)
    C = torch.randn(batch, seq_len, d_state, generator=gen, dtype=torch.float64)
    return x, dt, A, B, C


@pytest.mark.parametrize("doubling", [False, True])
@pytest.mark.parametrize(("seq_len", "chunk"), [(1, 4), (8, 4), (37, 8), (37, 64)])
def test_chunked_scan_equals_the_sequential_definition(seq_len: int, chunk: int, doubling: bool) -> None:
    inputs = scan_inputs(seq_len)
    expected = selective_scan_reference(*inputs)
    # float64 throughout: only summation order differs, so 1e-12 is many orders above the rounding
    torch.testing.assert_close(selective_scan(*inputs, chunk=chunk, doubling=doubling), expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("doubling", [False, True])
def test_chunked_scan_gradients_equal_the_sequential_definitions(doubling: bool) -> None:
    # the checkpointed chunks recompute their states in the backward pass: the gradients must not change
    inputs = [t.requires_grad_() for t in scan_inputs(21)]
    weights = torch.randn(3, 21, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    expected = torch.autograd.grad((selective_scan_reference(*inputs) * weights).sum(), inputs)
    got = torch.autograd.grad((selective_scan(*inputs, chunk=8, doubling=doubling) * weights).sum(), inputs)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, atol=1e-10, rtol=0)


def test_shapes() -> None:
    model = make_model()
    items = torch.randint(1, N_ITEMS + 1, (4, 7))
    assert model.encode(items).shape == (4, 7, 16)
    assert model.user_vector(items).shape == (4, 16)
    assert model.item_vectors().shape == (N_ITEMS + 1, 16)
    assert model.score(items).shape == (4, N_ITEMS + 1)


@pytest.mark.parametrize("n_layers", [1, 2])
def test_causality_later_items_do_not_change_earlier_states(n_layers: int) -> None:
    model = make_model(n_layers=n_layers)
    items = torch.tensor([[0, 0, 5, 9, 2, 7, 3]])
    changed = items.clone()
    changed[0, 5] = 11
    before, after = model.encode(items), model.encode(changed)
    torch.testing.assert_close(before[:, :5], after[:, :5], atol=ATOL, rtol=0)
    assert not torch.allclose(before[:, 5:], after[:, 5:], atol=1e-3)


def test_each_state_equals_the_user_vector_of_its_prefix() -> None:
    model = make_model()
    history = [4, 8, 15, 16, 23]
    states = model.encode(left_pad(history, 8))[0]  # [8, hidden]
    for t in range(1, len(history) + 1):
        prefix = model.user_vector(left_pad(history[:t], 8))[0]
        torch.testing.assert_close(states[8 - len(history) + t - 1], prefix, atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize("n_layers", [1, 2])
def test_left_padding_invariance(n_layers: int) -> None:
    model = make_model(n_layers=n_layers)
    history = [3, 1, 4, 1, 5]
    short = model.user_vector(left_pad(history, 5))
    long = model.user_vector(left_pad(history, 12))
    torch.testing.assert_close(short, long, atol=ATOL, rtol=ATOL)
    batch = torch.cat([left_pad(history, 12), torch.randint(1, N_ITEMS + 1, (1, 12))])
    torch.testing.assert_close(model.user_vector(batch)[:1], long, atol=ATOL, rtol=ATOL)


def test_padding_invariance_across_chunk_boundaries() -> None:
    # 70 and 140 positions: the history starts in a different chunk of the scan in each
    model = make_model(max_len=140)
    history = torch.randint(1, N_ITEMS + 1, (50,)).tolist()
    torch.testing.assert_close(model.user_vector(left_pad(history, 70)), model.user_vector(left_pad(history, 140)),
                               atol=ATOL, rtol=ATOL)


def test_no_nan_with_heavy_padding() -> None:
    model = make_model().train()
    items = torch.zeros(3, 12, dtype=torch.long)
    items[1, -1] = 7
    items[2, -2:] = torch.tensor([2, 9])  # row 0: nothing but padding (a cold user)
    states = model.encode(items)
    assert torch.isfinite(states).all()
    states[items > 0].sum().backward()
    for name, param in model.named_parameters():
        assert param.grad is None or torch.isfinite(param.grad).all(), name
    model.eval()
    assert torch.isfinite(model.score(items)).all()


def test_score_is_user_vector_times_item_vectors_and_padding_row_is_zero() -> None:
    model = make_model()
    items = torch.randint(0, N_ITEMS + 1, (5, 9))
    torch.testing.assert_close(model.score(items), model.user_vector(items) @ model.item_vectors().T)
    assert torch.equal(model.item_vectors()[0], torch.zeros(16))


def test_learns_a_next_item_rule() -> None:
    # A real signal: the next item is always (item mod 10) + 1, from random starts. After a few hundred Adam
    # steps on the shared full-softmax loss, the top-scored next item must follow the rule for most
    # histories (chance is 1 in 10 among the rule's items, 1 in 30 overall).
    from recsys.models.losses import full_ce

    torch.manual_seed(1)
    model = Mamba(10, MambaConfig(max_len=8, hidden=16, d_state=4, dropout=0.0))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        start = torch.randint(1, 11, (32, 1))
        seq = (start + torch.arange(9)) % 10 + 1  # [32, 9]
        states = model.encode(seq[:, :-1])
        loss = full_ce(states.reshape(-1, 16), seq[:, 1:].reshape(-1), model.item_vectors())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    seq = (torch.arange(1, 11)[:, None] + torch.arange(6)) % 10 + 1  # [10, 6]
    with torch.no_grad():
        predicted = model.score(seq)[:, 1:].argmax(dim=1) + 1
    expected = seq[:, -1] % 10 + 1
    assert (predicted == expected).float().mean() >= 0.9


def test_a_state_dict_loads_back_to_the_same_scores(tmp_path) -> None:
    model = make_model()
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    again = Mamba(N_ITEMS, MambaConfig.model_validate(to_dict(model.config)))
    again.load_state_dict(torch.load(tmp_path / "weights.pt"))
    items = torch.randint(0, N_ITEMS + 1, (3, 10))
    assert torch.equal(again.eval().score(items), model.score(items))


def test_config_validation_and_round_trip() -> None:
    config = from_dict(MambaConfig, {"hidden": 32, "d_state": 8, "loss": "gbce", "dt_rank": 3}, "model")
    assert from_dict(MambaConfig, to_dict(config)) == config
    with pytest.raises(ConfigError, match=r"model\.d_state"):
        from_dict(MambaConfig, {"d_state": 0}, "model")
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(MambaConfig, {"n_heads": 2}, "model")


def test_registry() -> None:
    assert MODELS["mamba"] == (Mamba, MambaConfig)
    assert get_model_spec("mamba") == (Mamba, MambaConfig)
