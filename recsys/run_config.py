"""The whole configuration of a run: data, model, trainer, evaluation, tracking.

A run config is one YAML file (see configs/) plus `section.key=value` overrides. The model section names
a model of the registry (`model.name: sasrec`) and its other keys are that model's config fields. Sections of
an older layout (`name: recformer` with `mode: full`) are read as today's model first
(`recsys.models.resolve_legacy_model`), here, so YAML files, overrides and saved model directories alike.

A trainable model's loss is one sub-config, `model.loss` (`recsys.models.losses.LossConfig`), written as its
name alone (`loss: ce`, `model.loss=bce`) or as a mapping (`loss: {name: sampled_ce, n_negatives: 512}`,
`model.loss.n_negatives=512`); an override of the name alone keeps the options a file gave the loss.
Compatibility: files written before the loss was a sub-config (recsys 0.1's configs, and the config.yaml of
its run folders and saved models) have the loss options flat in the model section (`loss: gbce`,
`n_negatives: 7`, `gbce_t: 0.5`). `_fold_flat_loss_keys` moves them into `loss` when such a file is read, and
`_loss_override` does the same for an override written the old way (`model.n_negatives=512`): the one place
that knows the old loss layout.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

from recsys.config import (
    ConfigModel,
    DataConfig,
    EvaluationConfig,
    TrackingConfig,
    TrainerConfig,
    from_dict,
    load_yaml,
    parse_override,
    set_key,
    to_dict,
)
from recsys.errors import ConfigError
from recsys.models import MODELS, resolve_legacy_model
from recsys.models.losses import LossConfig

SECTIONS = ("data", "model", "trainer", "evaluation", "tracking")
DEFAULT_MODEL = "sasrec"


@dataclasses.dataclass(frozen=True)
class RunConfig:
    data: DataConfig
    model_name: str
    model: ConfigModel  # the model's own config, e.g. SASRecConfig
    trainer: TrainerConfig
    tracking: TrackingConfig
    # Last, with a default: configs and saved models written before the section existed read as 'none'.
    evaluation: EvaluationConfig = EvaluationConfig()

    def to_dict(self) -> dict[str, Any]:
        """Plain data in the YAML layout, so that `run_config_from_dict(cfg.to_dict())` round-trips."""
        return {
            "data": to_dict(self.data),
            "model": {"name": self.model_name, **to_dict(self.model)},
            "trainer": to_dict(self.trainer),
            "evaluation": to_dict(self.evaluation),
            "tracking": to_dict(self.tracking),
        }


def load_run_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a run config from YAML (None: all defaults) and apply overrides; errors name file, line and key."""
    data = load_yaml(path) if path is not None else {}
    return run_config_from_dict(data, where=str(path) if path is not None else "config", overrides=overrides)


def run_config_from_dict(data: dict[str, Any], where: str = "config",
                         overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """The run config of plain data (a YAML file's, a saved model's), with `section.key=value` overrides."""
    pairs = [parse_override(item) for item in overrides]
    model_cls = _model_class(data, pairs)
    merged = copy.deepcopy(data)  # the caller's data (a saved model's config) stays as it was
    if isinstance(merged.get("model"), dict) and model_cls is not None:
        merged["model"] = _fold_flat_loss_keys(merged["model"], model_cls, where)
    for parts, value in pairs:
        parts = _loss_override(merged, parts, value, model_cls)
        set_key(merged, parts, value)

    unknown = sorted(set(merged) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{where}: {unknown[0]}: unknown section (known: {', '.join(SECTIONS)})")
    for section in SECTIONS:
        if merged.get(section) is not None and not isinstance(merged[section], dict):
            raise ConfigError(f"{where}: {section}: expected a mapping of keys, got {type(merged[section]).__name__} "
                              f"{merged[section]!r:.60}")
    model_data = dict(merged.get("model") or {})
    model_name = model_data.pop("name", DEFAULT_MODEL)
    if isinstance(model_name, str):
        model_name, model_data = resolve_legacy_model(model_name, model_data, f"{where}: model")
    if not isinstance(model_name, str) or model_name not in MODELS:
        raise ConfigError(f"{where}: model.name: unknown model {model_name!r} (known: {', '.join(sorted(MODELS))})")
    model_cls, model_config_cls = MODELS[model_name]
    evaluation = from_dict(EvaluationConfig, merged.get("evaluation"), f"{where}: evaluation")
    if evaluation.time_context != "none" and not model_cls.uses_timestamps:
        raise ConfigError(f"{where}: evaluation.time_context: {evaluation.time_context} needs a model that reads "
                          f"timestamps ({', '.join(n for n, (cls, _) in sorted(MODELS.items()) if cls.uses_timestamps)}); "
                          f"{model_name} does not")
    return RunConfig(
        data=from_dict(DataConfig, merged.get("data"), f"{where}: data"),
        model_name=model_name,
        model=from_dict(model_config_cls, model_data, f"{where}: model"),
        trainer=from_dict(TrainerConfig, merged.get("trainer"), f"{where}: trainer"),
        tracking=from_dict(TrackingConfig, merged.get("tracking"), f"{where}: tracking"),
        evaluation=evaluation,
    )


def _model_class(data: dict[str, Any], pairs: list[tuple[list[str], Any]]) -> type[ConfigModel] | None:
    """The config class of the model the run will have (the last model.name override, else the file's)."""
    names = [value for parts, value in pairs if parts == ["model", "name"]]
    model = data.get("model")
    name = names[-1] if names else model.get("name", DEFAULT_MODEL) if isinstance(model, dict) else DEFAULT_MODEL
    return MODELS[name][1] if isinstance(name, str) and name in MODELS else None


def _loss_class(model_cls: type[ConfigModel] | None) -> type[LossConfig] | None:
    field = model_cls.model_fields.get("loss") if model_cls is not None else None
    loss_cls = field.annotation if field is not None else None
    return loss_cls if isinstance(loss_cls, type) and issubclass(loss_cls, LossConfig) else None


def _flat_loss_keys(model_cls: type[ConfigModel] | None) -> list[str]:
    """The loss options that files of recsys 0.1 wrote flat in the model section (n_negatives, gbce_t)."""
    loss_cls = _loss_class(model_cls)
    if loss_cls is None or model_cls is None:
        return []
    return [k for k in loss_cls.model_fields if k != loss_cls.shorthand_key and k not in model_cls.model_fields]


def _fold_flat_loss_keys(model: dict[str, Any], model_cls: type[ConfigModel], where: str) -> dict[str, Any]:
    """A model section with its flat loss options moved into `loss` (`loss: gbce, n_negatives: 7` ->
    `loss: {name: gbce, n_negatives: 7}`); unchanged when it has none."""
    flat = [key for key in _flat_loss_keys(model_cls) if key in model]
    loss = model.get("loss", {})
    if not flat or not isinstance(loss, (str, dict)):
        return model
    folded = {k: v for k, v in model.items() if k not in flat}
    loss = {LossConfig.shorthand_key: loss} if isinstance(loss, str) else dict(loss)
    for key in flat:
        if key in loss:
            raise ConfigError(f"{where}: model.{key}: given twice, also as model.loss.{key} (write it once, in loss)")
        loss[key] = model[key]
    folded["loss"] = loss
    return folded


def _loss_override(data: dict[str, Any], parts: list[str], value: Any,
                   model_cls: type[ConfigModel] | None) -> list[str]:
    """Where an override of the loss goes: `model.n_negatives` (the old flat key) to model.loss.n_negatives;
    `model.loss=bce` to model.loss.name when the loss is a mapping (its options stay); and a loss written as
    its name alone becomes a mapping when an option of it is set (`model.loss.n_negatives=512`)."""
    if parts[:1] != ["model"] or _loss_class(model_cls) is None:
        return parts
    if len(parts) == 2 and parts[1] in _flat_loss_keys(model_cls):
        parts = ["model", "loss", parts[1]]
    model = data.get("model")
    loss = model.get("loss") if isinstance(model, dict) else None
    if parts == ["model", "loss"] and isinstance(loss, dict) and not isinstance(value, dict):
        return ["model", "loss", str(LossConfig.shorthand_key)]
    if len(parts) > 2 and parts[1] == "loss" and isinstance(loss, str) and isinstance(model, dict):
        model["loss"] = {LossConfig.shorthand_key: loss}
    return parts
