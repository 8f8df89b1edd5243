"""SASRec: shapes, causality, left-padding invariance, NaN safety, the score contract, config and registry."""

from __future__ import annotations

import pytest
import torch

from recsys.config import from_dict, to_dict
from recsys.errors import ConfigError
from recsys.models import MODELS, SASRec, SASRecConfig, get_model_spec

N_ITEMS = 30


def make_model(**overrides: object) -> SASRec:
    torch.manual_seed(0)
    config = SASRecConfig(**{"max_len": 12, "hidden": 16, "n_heads": 2, "n_layers": 2, **overrides})  # type: ignore[arg-type]
    return SASRec(N_ITEMS, config).eval()


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


@pytest.mark.parametrize("layer_norm", ["pre", "post", "sasrec"])
def test_causality_later_items_do_not_change_earlier_states(layer_norm: str) -> None:
    model = make_model(layer_norm=layer_norm)
    items = torch.tensor([[0, 0, 5, 9, 2, 7, 3]])
    changed = items.clone()
    changed[0, 5] = 11
    before, after = model.encode(items), model.encode(changed)
    torch.testing.assert_close(before[:, :5], after[:, :5])
    assert not torch.allclose(before[:, 5:], after[:, 5:])


def test_each_state_equals_the_user_vector_of_its_prefix() -> None:
    # The training objective relies on this: position t sees exactly the history items[:t+1].
    model = make_model()
    history = [4, 8, 15, 16, 23]
    states = model.encode(left_pad(history, 8))[0]  # [8, hidden]
    for t in range(1, len(history) + 1):
        prefix = model.user_vector(left_pad(history[:t], 8))[0]
        torch.testing.assert_close(states[8 - len(history) + t - 1], prefix, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layer_norm", ["pre", "post", "sasrec"])
@pytest.mark.parametrize("n_layers", [1, 3])
def test_user_vector_equals_the_last_state_of_encode(layer_norm: str, n_layers: int) -> None:
    # user_vector runs its lower blocks on right-padded rows with plain causal attention (no mask): it must
    # still be encode's last state, for rows with no padding, some, and nothing but padding.
    model = make_model(layer_norm=layer_norm, n_layers=n_layers)
    rows = [[], [7], [3, 1, 4], [2, 7, 1, 8, 2, 8, 1, 8], list(range(1, 13))]
    items = torch.cat([left_pad(row, 12) for row in rows])
    torch.testing.assert_close(model.user_vector(items), model.encode(items)[:, -1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layer_norm", ["pre", "post", "sasrec"])
def test_left_padding_invariance(layer_norm: str) -> None:
    model = make_model(layer_norm=layer_norm)
    history = [3, 1, 4, 1, 5]
    short = model.user_vector(left_pad(history, 5))
    long = model.user_vector(left_pad(history, 12))
    torch.testing.assert_close(short, long, atol=1e-5, rtol=1e-5)
    # Also within one batch, next to a longer sequence.
    batch = torch.cat([left_pad(history, 12), torch.randint(1, N_ITEMS + 1, (1, 12))])
    torch.testing.assert_close(model.user_vector(batch)[:1], long, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layer_norm", ["pre", "post", "sasrec"])
def test_no_nan_with_heavy_padding(layer_norm: str) -> None:
    model = make_model(layer_norm=layer_norm).train()
    items = torch.zeros(3, 12, dtype=torch.long)
    items[1, -1] = 7  # one real item
    items[2, -2:] = torch.tensor([2, 9])  # row 0: nothing but padding (a cold user)
    states = model.encode(items)
    assert torch.isfinite(states).all()
    states[items > 0].sum().backward()
    for name, param in model.named_parameters():
        assert param.grad is None or torch.isfinite(param.grad).all(), name
    model.eval()
    assert torch.isfinite(model.score(items)).all()


def test_score_is_user_vector_times_item_vectors() -> None:
    model = make_model()
    items = torch.randint(0, N_ITEMS + 1, (5, 9))
    expected = model.user_vector(items) @ model.item_vectors().T
    torch.testing.assert_close(model.score(items), expected)


def test_padding_row_is_zero_and_gets_no_gradient() -> None:
    model = make_model().train()
    assert torch.equal(model.item_vectors()[0], torch.zeros(16))
    items = torch.tensor([[0, 0, 1, 2, 3]])
    # Padding id 0 in the input contributes no gradient to row 0 (padding_idx); column 0 of score would,
    # which is why losses and rankers never use it.
    model.score(items)[:, 1:].sum().backward()
    assert torch.equal(model.item_emb.weight.grad[0], torch.zeros(16))


def test_padding_positions_carry_no_embedding() -> None:
    # An item changed at a padding position would be a different input, but the 0 id must contribute
    # nothing: two paddings of different lengths already agree (above); here the positional table's
    # padding row is zero too.
    model = make_model()
    assert torch.equal(model.pos_emb.weight[0], torch.zeros(16))


def test_bad_inputs_raise() -> None:
    model = make_model()
    with pytest.raises(ValueError, match="max_len 12"):
        model.encode(torch.ones(1, 13, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[batch, seq_len\]"):
        model.encode(torch.ones(13, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        model.encode(torch.ones(1, 3))
    with pytest.raises(ValueError, match="n_items"):
        SASRec(0, SASRecConfig())


def test_config_validation_and_round_trip() -> None:
    config = from_dict(SASRecConfig, {"hidden": 32, "n_heads": 4, "loss": "gbce", "layer_norm": "post"}, "model")
    assert from_dict(SASRecConfig, to_dict(config)) == config
    with pytest.raises(ConfigError, match="model.loss"):
        from_dict(SASRecConfig, {"loss": "hinge"}, "model")
    with pytest.raises(ConfigError, match=r"hidden \(30\) must be divisible by n_heads \(4\)"):
        from_dict(SASRecConfig, {"hidden": 30, "n_heads": 4}, "model")
    with pytest.raises(ConfigError, match=r"^model\.loss\.gbce_t: must be in \[0, 1\], got 1\.5$"):
        from_dict(SASRecConfig, {"loss": {"name": "gbce", "gbce_t": 1.5}}, "model")
    # the loss options are the loss's: flat in the model section they are only read from old files (run_config)
    with pytest.raises(ConfigError, match=r"^model\.gbce_t: unknown key"):
        from_dict(SASRecConfig, {"gbce_t": 0.5}, "model")
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(SASRecConfig, {"n_items": 10}, "model")


def test_registry() -> None:
    assert MODELS["sasrec"] == (SASRec, SASRecConfig)
    assert get_model_spec("sasrec") == (SASRec, SASRecConfig)
    with pytest.raises(ConfigError, match=r"known: .*\bsasrec\b"):  # among the other registered models
        get_model_spec("sasrek")


# -- DARE: decoupled attention and representation tables ----------------------------------------------------

def test_decoupled_tables_have_their_widths_and_only_the_representation_table_scores() -> None:
    model = make_model(attention_hidden=8)
    assert model.attention_emb is not None and model.attention_emb.weight.shape == (N_ITEMS + 1, 8)
    assert model.blocks[0].attn.qk.weight.shape == (16, 8)  # queries and keys, each 8 wide
    assert model.item_vectors() is model.item_emb.weight and model.item_vectors().shape == (N_ITEMS + 1, 16)
    items = torch.randint(1, N_ITEMS + 1, (4, 7))
    assert model.encode(items).shape == (4, 7, 16) and model.score(items).shape == (4, N_ITEMS + 1)
    # the attention table changes which items are attended to, hence the states, but is never a scored vector
    before = model.user_vector(items)
    with torch.no_grad():
        model.attention_emb.weight[1:].normal_()
    assert not torch.allclose(model.user_vector(items), before, atol=1e-4)
    torch.testing.assert_close(model.score(items), model.user_vector(items) @ model.item_emb.weight.T)


@pytest.mark.parametrize("layer_norm", ["pre", "post", "sasrec"])
def test_decoupled_attention_is_causal_padding_invariant_and_user_vector_is_the_last_state(layer_norm: str) -> None:
    model = make_model(attention_hidden=8, layer_norm=layer_norm)
    items = torch.tensor([[0, 0, 5, 9, 2, 7, 3]])
    changed = items.clone()
    changed[0, 5] = 11
    torch.testing.assert_close(model.encode(items)[:, :5], model.encode(changed)[:, :5])
    history = [3, 1, 4, 1, 5]
    torch.testing.assert_close(model.user_vector(left_pad(history, 5)), model.user_vector(left_pad(history, 12)),
                               atol=1e-5, rtol=1e-5)
    rows = torch.cat([left_pad(row, 12) for row in [[], [7], [3, 1, 4], list(range(1, 13))]])
    torch.testing.assert_close(model.user_vector(rows), model.encode(rows)[:, -1], atol=1e-5, rtol=1e-5)


def test_decoupled_attention_gets_gradients_from_training() -> None:
    model = make_model(attention_hidden=8).train()
    items = torch.randint(1, N_ITEMS + 1, (3, 9))
    model.encode(items).pow(2).sum().backward()
    assert model.attention_emb.weight.grad is not None and model.attention_emb.weight.grad[1:].abs().sum() > 0
    assert torch.equal(model.attention_emb.weight.grad[0], torch.zeros(8))  # padding row: no gradient


def test_decoupled_config_validation_and_state_dict_keys() -> None:
    config = from_dict(SASRecConfig, {"hidden": 32, "n_heads": 2, "attention_hidden": 8}, "model")
    assert from_dict(SASRecConfig, to_dict(config)) == config
    with pytest.raises(ConfigError, match=r"attention_hidden \(9\) must be divisible by n_heads \(2\)"):
        from_dict(SASRecConfig, {"n_heads": 2, "attention_hidden": 9}, "model")
    # without the option the state dict is SASRec's as it always was: models saved before it load unchanged
    plain = set(make_model().state_dict())
    assert not any("attention" in key or ".qk." in key for key in plain)
    assert {"attention_emb.weight", "attention_pos_emb.weight", "blocks.0.attn.qk.weight"} <= set(
        make_model(attention_hidden=8).state_dict())


def test_decoupled_model_round_trips_through_its_state_dict(tmp_path) -> None:
    model = make_model(attention_hidden=8)
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    again = SASRec(N_ITEMS, SASRecConfig.model_validate(to_dict(model.config)))
    again.load_state_dict(torch.load(tmp_path / "weights.pt"))
    items = torch.randint(0, N_ITEMS + 1, (3, 10))
    assert torch.equal(again.eval().score(items), model.score(items))
