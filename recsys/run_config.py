"""The whole configuration of a run: data, model, trainer, tracking.

A run config is one YAML file (see configs/) plus `section.key=value` overrides. The model section names
a model of the registry (`model.name: sasrec`) and its other keys are that model's config fields. Sections of
an older layout (`name: recformer` with `mode: full`) are read as today's model first
(`recsys.models.resolve_legacy_model`), here, so YAML files, overrides and saved model directories alike.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from recsys.config import (
    DataConfig,
    TrackingConfig,
    TrainerConfig,
    apply_overrides,
    from_dict,
    load_yaml,
    to_dict,
)
from recsys.errors import ConfigError
from recsys.models import MODELS, resolve_legacy_model

SECTIONS = ("data", "model", "trainer", "tracking")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    data: DataConfig
    model_name: str
    model: Any  # the model's own config dataclass, e.g. SASRecConfig
    trainer: TrainerConfig
    tracking: TrackingConfig

    def to_dict(self) -> dict[str, Any]:
        """Plain data in the YAML layout, so that `run_config_from_dict(cfg.to_dict())` round-trips."""
        return {
            "data": to_dict(self.data),
            "model": {"name": self.model_name, **to_dict(self.model)},
            "trainer": to_dict(self.trainer),
            "tracking": to_dict(self.tracking),
        }


def load_run_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a run config from YAML (None: all defaults) and apply overrides; errors name file and key."""
    data = load_yaml(path) if path is not None else {}
    data = apply_overrides(data, list(overrides))
    return run_config_from_dict(data, where=str(path) if path is not None else "config")


def run_config_from_dict(data: dict[str, Any], where: str = "config") -> RunConfig:
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{where}: {unknown[0]}: unknown section (known: {', '.join(SECTIONS)})")
    for section in SECTIONS:
        if data.get(section) is not None and not isinstance(data[section], dict):
            raise ConfigError(f"{where}: {section}: expected a mapping of keys, got {type(data[section]).__name__} "
                              f"{data[section]!r:.60}")
    model_data = dict(data.get("model") or {})
    model_name = model_data.pop("name", "sasrec")
    model_name, model_data = resolve_legacy_model(model_name, model_data, f"{where}: model")
    if model_name not in MODELS:
        raise ConfigError(f"{where}: model.name: unknown model {model_name!r} (known: {', '.join(sorted(MODELS))})")
    _, model_config_cls = MODELS[model_name]
    return RunConfig(
        data=from_dict(DataConfig, data.get("data"), f"{where}: data"),
        model_name=model_name,
        model=from_dict(model_config_cls, model_data, f"{where}: model"),
        trainer=from_dict(TrainerConfig, data.get("trainer"), f"{where}: trainer"),
        tracking=from_dict(TrackingConfig, data.get("tracking"), f"{where}: tracking"),
    )
