"""Sequence models: plain `nn.Module`s over item-id tensors, each with its config beside it.

Adding a model = one file defining the model (a `recsys.models.base.SequenceModel`, the contract the rest
of the toolkit talks to) and its config, plus one line in `MODELS`; tests/models/test_contract.py then
checks it like every other registered model.
"""

from __future__ import annotations

from recsys.errors import ConfigError
from recsys.models.base import Objective, SequenceModel
from recsys.models.bert4rec import BERT4Rec, BERT4RecConfig
from recsys.models.gru4rec import GRU4Rec, GRU4RecConfig
from recsys.models.popularity import Popularity, PopularityConfig
from recsys.models.recformer import Recformer, RecformerConfig
from recsys.models.sasrec import SASRec, SASRecConfig

MODELS: dict[str, tuple[type[SequenceModel], type]] = {
    "sasrec": (SASRec, SASRecConfig),
    "bert4rec": (BERT4Rec, BERT4RecConfig),
    "gru4rec": (GRU4Rec, GRU4RecConfig),
    "popularity": (Popularity, PopularityConfig),
    "recformer": (Recformer, RecformerConfig),  # needs the text extra, imported only when built
}
"""Model name (as written in configs) -> (model class, its config dataclass)."""


def get_model_spec(name: str) -> tuple[type[SequenceModel], type]:
    """The (model class, config class) registered as `name`; ConfigError naming the known models otherwise."""
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r} (known: {', '.join(sorted(MODELS))})") from None


def build_model(name: str, config: object, n_items: int) -> SequenceModel:
    """A fresh model of the registered kind `name` over `n_items` items."""
    model_cls, _ = get_model_spec(name)
    return model_cls(n_items, config)


__all__ = [
    "BERT4Rec",
    "BERT4RecConfig",
    "GRU4Rec",
    "GRU4RecConfig",
    "MODELS",
    "Objective",
    "Popularity",
    "PopularityConfig",
    "Recformer",
    "RecformerConfig",
    "SASRec",
    "SASRecConfig",
    "SequenceModel",
    "build_model",
    "get_model_spec",
]
