"""Recommender.load(..., compile=True): the same recommendations as eager encoding, compiled once at load
(no recompiles for single users, one-item histories or full windows), small batches left eager, and a
warning plus eager encoding where torch.compile fails."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch

from recsys.retrieval import Recommender, recommender
from recsys.retrieval.compiled import CompileFallbackWarning
from recsys.saved_model import SavedModel

from .conftest import CONFIG, HISTORIES, ITEM_IDS, tiny_saved_model


def ids(recs: list) -> list[object]:
    return [r.item_id for r in recs]


def bert4rec_saved() -> SavedModel:
    """The tiny saved model's tables with a random BERT4Rec (two graphs: short histories and full windows)."""
    from recsys.models import BERT4Rec, BERT4RecConfig

    torch.manual_seed(0)
    config = {"model": {"name": "bert4rec", "max_len": 8, "hidden": 16, "n_layers": 2, "n_heads": 2}}
    model = BERT4Rec(len(ITEM_IDS), BERT4RecConfig(**{k: v for k, v in config["model"].items() if k != "name"}))
    return dataclasses.replace(tiny_saved_model(), model_name="bert4rec", config=config,
                               state_dict=model.state_dict())


@pytest.mark.parametrize("make_saved", [tiny_saved_model, bert4rec_saved], ids=["sasrec", "bert4rec"])
def test_compiled_encoder_gives_the_same_recommendations_without_recompiling(make_saved, monkeypatch) -> None:
    monkeypatch.setattr(recommender, "COMPILED_MIN_BATCH", 1)  # every call compiled, single users included
    saved = make_saved()
    eager = Recommender.from_saved(saved)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)  # compiling must work on this machine
        compiled = Recommender.from_saved(saved, compile=True)
    assert compiled.compiled and not eager.compiled
    users = sorted(HISTORIES)
    histories = [[ITEM_IDS[3]], ITEM_IDS[:CONFIG["model"]["max_len"]], ITEM_IDS[5:25]]  # 1 item, a full window, longer
    try:
        torch._dynamo.config.error_on_recompile = True  # the warm-up at load compiled every graph needed
        got = ([compiled.recommend(user=user, k=2) for user in users], compiled.recommend_batch(users=users, k=2),
               compiled.recommend_batch(histories=histories, k=5), compiled.recommend(history=histories[0], k=5))
    finally:
        torch._dynamo.config.error_on_recompile = False
    want = ([eager.recommend(user=user, k=2) for user in users], eager.recommend_batch(users=users, k=2),
            eager.recommend_batch(histories=histories, k=5), eager.recommend(history=histories[0], k=5))
    assert [ids(r) for r in got[0]] == [ids(r) for r in want[0]]
    assert [ids(r) for r in got[1]] == [ids(r) for r in want[1]]
    assert [ids(r) for r in got[2]] == [ids(r) for r in want[2]]
    assert ids(got[3]) == ids(want[3])
    scores = np.array([[r.score for r in row] for row in got[2]])
    np.testing.assert_allclose(scores, [[r.score for r in row] for row in want[2]], rtol=1e-4, atol=1e-5)


def test_a_failing_compile_warns_and_encodes_eagerly(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_compiler(fn, **kwargs):  # what torch.compile does on a machine without a working C++ compiler
        def run(*args, **kw):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nmore detail")
        return run

    monkeypatch.setattr(torch, "compile", no_compiler)
    saved = tiny_saved_model()
    with pytest.warns(CompileFallbackWarning, match=r"^compile=True: torch.compile failed \(RuntimeError: "
                                                    r"InvalidCxxCompiler: No working C\+\+ compiler found\); "
                                                    r"encoding without it$"):
        rec = Recommender.from_saved(saved, compile=True)
    assert not rec.compiled
    assert ids(rec.recommend(user=12, k=3)) == ids(Recommender.from_saved(saved).recommend(user=12, k=3))


def test_small_batches_run_eagerly_and_large_ones_compiled(monkeypatch: pytest.MonkeyPatch) -> None:
    rec = Recommender.from_saved(tiny_saved_model(), compile=True)
    calls: list[int] = []
    compiled = rec._compiled_user_vector
    monkeypatch.setattr(rec, "_compiled_user_vector", lambda items: calls.append(len(items)) or compiled(items))
    rec.recommend_batch(users=sorted(HISTORIES), k=2)
    assert calls == []  # 5 users: fewer than COMPILED_MIN_BATCH
    histories = [ITEM_IDS[i:i + 4] for i in range(recommender.COMPILED_MIN_BATCH)]
    assert [ids(r) for r in rec.recommend_batch(histories=histories, k=3)] == [
        ids(r) for r in Recommender.from_saved(tiny_saved_model()).recommend_batch(histories=histories, k=3)]
    assert calls == [recommender.COMPILED_MIN_BATCH]
