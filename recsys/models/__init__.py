"""Sequence models: plain `nn.Module`s over item-id tensors, each with its config (a pydantic model) beside it.

Adding a model = one file defining the model (a `recsys.models.base.SequenceModel`, the contract the rest
of the toolkit talks to) and its config, plus one line in `MODELS`; tests/models/test_contract.py then
checks it like every other registered model.

`resolve_legacy_model` is the one place where a model section written for an older layout of the models is
read as today's model (configs and saved model directories keep loading as they did).
"""

from __future__ import annotations

from typing import Any

from recsys.config import ConfigModel
from recsys.errors import ConfigError
from recsys.models.actr import ACTR, ACTRConfig
from recsys.models.base import Objective, SequenceModel
from recsys.models.bert4rec import BERT4Rec, BERT4RecConfig
from recsys.models.gru4rec import GRU4Rec, GRU4RecConfig
from recsys.models.hstu import HSTU, HSTUConfig
from recsys.models.hstu_actr import HSTUACTR, HSTUACTRConfig
from recsys.models.mamba import Mamba, MambaConfig
from recsys.models.popularity import Popularity, PopularityConfig
from recsys.models.recformer import Recformer, RecformerConfig
from recsys.models.recformer_full import RecformerFull, RecformerFullConfig
from recsys.models.repeat_baselines import PersonalPopularity, RepeatBaselineConfig, RepeatRecent
from recsys.models.sasrec import SASRec, SASRecConfig
from recsys.models.sasrec_actr import SASRecACTR, SASRecACTRConfig

MODELS: dict[str, tuple[type[SequenceModel], type[ConfigModel]]] = {
    "sasrec": (SASRec, SASRecConfig),
    "bert4rec": (BERT4Rec, BERT4RecConfig),
    "gru4rec": (GRU4Rec, GRU4RecConfig),
    "hstu": (HSTU, HSTUConfig),
    "mamba": (Mamba, MambaConfig),
    "popularity": (Popularity, PopularityConfig),
    # Repeat-aware: history items scored on top of the inner product (SequenceModel.history_scores)
    "personal_popularity": (PersonalPopularity, RepeatBaselineConfig),
    "repeat_recent": (RepeatRecent, RepeatBaselineConfig),
    "actr": (ACTR, ACTRConfig),
    "sasrec_actr": (SASRecACTR, SASRecACTRConfig),  # learnt: SASRec plus ACT-R memory, trained together
    "hstu_actr": (HSTUACTR, HSTUACTRConfig),  # learnt: HSTU plus ACT-R memory, trained together
    # The text models need the text extra, imported only when one is built.
    "recformer": (Recformer, RecformerConfig),
    "recformer_full": (RecformerFull, RecformerFullConfig),
}
"""Model name (as written in configs) -> (model class, its config class)."""

# Recformer was one class with `mode: frozen | full` until the two modes became two models. Every config it
# wrote (saved model directories, MLflow runs) has `mode` and ALL its keys, whichever mode read them; these
# are the keys that the mode did not read, and that the model it became does not have.
_RECFORMER_MODES = {
    "frozen": ("recformer", ("max_tokens",)),
    "full": ("recformer_full", ("hidden", "n_layers", "n_heads", "dropout", "ffn_mult", "adapter", "similarity",
                                "item_tower", "last_item_residual", "residual_weight")),
}


def resolve_legacy_model(name: str, section: dict[str, Any], where: str = "model") -> tuple[str, dict[str, Any]]:
    """(model name, its config keys) of a model section as today's registry reads it.

    `name: recformer` with a `mode` key is the one-class Recformer's: `mode: full` is `recformer_full`,
    `mode: frozen` is `recformer`, each without the keys its mode ignored (they never changed what it
    computed, so dropping them keeps the model as it was). Any other section is returned as it is, so a key
    unknown to a model is still an error. `where` prefixes errors ("configs/x.yaml: model")."""
    if name != "recformer" or "mode" not in section:
        return name, section
    rest = {k: v for k, v in section.items() if k != "mode"}
    if section["mode"] not in _RECFORMER_MODES:
        raise ConfigError(f"{where}.mode: expected 'frozen' or 'full' (or model.name: recformer_full), got "
                          f"{section['mode']!r}")
    new_name, ignored = _RECFORMER_MODES[section["mode"]]
    return new_name, {k: v for k, v in rest.items() if k not in ignored}


def get_model_spec(name: str) -> tuple[type[SequenceModel], type[ConfigModel]]:
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
    "ACTR",
    "ACTRConfig",
    "PersonalPopularity",
    "RepeatBaselineConfig",
    "RepeatRecent",
    "BERT4Rec",
    "BERT4RecConfig",
    "GRU4Rec",
    "GRU4RecConfig",
    "HSTU",
    "HSTUConfig",
    "MODELS",
    "Mamba",
    "MambaConfig",
    "Objective",
    "Popularity",
    "PopularityConfig",
    "Recformer",
    "RecformerConfig",
    "RecformerFull",
    "RecformerFullConfig",
    "SASRec",
    "SASRecConfig",
    "SequenceModel",
    "build_model",
    "get_model_spec",
    "resolve_legacy_model",
]
