"""The search space of `recsys tune`: which config keys a study samples, and from what.

A space is a YAML mapping of dotted config keys (as an override writes them) to a distribution:

    model.hidden: {type: categorical, choices: [32, 64, 128]}
    model.n_layers: {type: int, low: 1, high: 3}
    model.dropout: {type: float, low: 0.0, high: 0.5}
    trainer.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}

Each model has its defaults in configs/search/<model>.yaml; `--space FILE` replaces them. A space is checked
whole when it loads, before any trial: its own fields by pydantic (one line naming the file and key), and every
value it can produce (both ends of a range, every choice) against the run config it will be applied to, so a
key the model does not have (`model.hiden`) or a bound out of the key's range (`model.dropout` up to 1) is an
error at once, not a failed trial an hour in.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, Strict, model_validator

from recsys.config import ConfigModel, FieldError, from_dict, load_yaml, to_dict, yaml_text
from recsys.errors import ConfigError
from recsys.run_config import SECTIONS, run_config_from_dict

SEARCH_SPACES = Path(__file__).resolve().parents[2] / "configs" / "search"
"""The default spaces, configs/search/<model>.yaml of the recsys checkout this package runs from."""

Scalar = bool | int | float | str | None  # what Optuna can hold as a categorical choice


class CategoricalParam(ConfigModel):
    """One of a list of values, each as likely (before the sampler learns)."""

    type: Literal["categorical"] = "categorical"
    choices: Annotated[tuple[Scalar, ...], Strict(False), Field(min_length=1)]
    """The values to choose from (numbers, strings, true/false, null)."""

    def bounds(self) -> list[Any]:
        return list(self.choices)

    def suggest(self, trial: Any, key: str) -> Any:
        return trial.suggest_categorical(key, list(self.choices))


class IntParam(ConfigModel):
    """A whole number in [low, high]."""

    type: Literal["int"] = "int"
    low: int
    high: int
    step: Annotated[int, Field(ge=1)] = 1
    """Only low, low + step, ... are sampled."""
    log: bool = False
    """Sample uniformly in log(value): for sizes where doubling matters more than adding (needs low >= 1)."""

    @model_validator(mode="after")
    def _a_range(self) -> IntParam:
        _check_range(self.low, self.high, self.log)
        if self.log and self.step != 1:
            raise FieldError("step", "must be 1 with log: true (Optuna samples a log range without steps)")
        return self

    def bounds(self) -> list[Any]:
        return [self.low, self.high]

    def suggest(self, trial: Any, key: str) -> Any:
        return trial.suggest_int(key, self.low, self.high, step=self.step, log=self.log)


class FloatParam(ConfigModel):
    """A number in [low, high]."""

    type: Literal["float"] = "float"
    low: float
    high: float
    step: Annotated[float, Field(gt=0)] | None = None
    """Only low, low + step, ... are sampled (None: any number in the range)."""
    log: bool = False
    """Sample uniformly in log(value): for rates and weights whose scale is the question (needs low > 0)."""

    @model_validator(mode="after")
    def _a_range(self) -> FloatParam:
        _check_range(self.low, self.high, self.log)
        if self.log and self.step is not None:
            raise FieldError("step", "must be null with log: true (Optuna samples a log range without steps)")
        return self

    def bounds(self) -> list[Any]:
        return [self.low, self.high]

    def suggest(self, trial: Any, key: str) -> Any:
        return trial.suggest_float(key, self.low, self.high, step=self.step, log=self.log)


Param = CategoricalParam | IntParam | FloatParam
PARAM_TYPES: dict[str, type[ConfigModel]] = {"categorical": CategoricalParam, "int": IntParam, "float": FloatParam}


def _check_range(low: float, high: float, log: bool) -> None:
    if high < low:
        raise FieldError("high", f"must be at least low ({low:g}), got {high:g}")
    if log and low <= 0:
        raise FieldError("low", f"must be greater than 0 with log: true, got {low:g}")


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """The keys a study samples, in the file's order, and where they were read from."""

    params: dict[str, Param]
    source: str

    def sample(self, trial: Any) -> dict[str, Any]:
        """One value per key, drawn by the trial's sampler."""
        return {key: param.suggest(trial, key) for key, param in self.params.items()}

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain data in the file's layout (what a study keeps, to refuse a resume with another space)."""
        return {key: to_dict(param) for key, param in self.params.items()}


def as_overrides(values: dict[str, Any]) -> list[str]:
    """Sampled values as `section.key=value` overrides, written as a config file writes them."""
    return [f"{key}={yaml_text(value)}" for key, value in values.items()]


def default_space_path(model_name: str) -> Path:
    return SEARCH_SPACES / f"{model_name}.yaml"


def load_search_space(path: str | Path | None, model_name: str, base: dict[str, Any],
                      overrides: list[str] | tuple[str, ...] = ()) -> SearchSpace:
    """The space in `path` (None: the model's default in configs/search/), checked against the run config
    `base` (plain data, as a config file holds it) with `overrides` applied."""
    if path is None:
        path = default_space_path(model_name)
        if not path.is_file():
            known = sorted(p.stem for p in SEARCH_SPACES.glob("*.yaml")) if SEARCH_SPACES.is_dir() else []
            raise ConfigError(f"no default search space for model {model_name!r} ({path} not found; defaults for: "
                              f"{', '.join(known) or 'none'}); give one with --space FILE")
    data = load_yaml(path)
    where = str(path)
    if not data:
        raise ConfigError(f"{where}: an empty search space; give at least one key, e.g. "
                          "trainer.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}")
    params = {str(key): _param(where, str(key), spec) for key, spec in data.items()}
    space = SearchSpace(params, where)
    _check_against_config(space, base, overrides)
    return space


def _param(where: str, key: str, spec: Any) -> Param:
    section = key.split(".", 1)[0]
    if section not in SECTIONS or "." not in key:
        raise ConfigError(f"{where}: {key}: not a config key (write section.key, sections: {', '.join(SECTIONS)})")
    if key == "model.name":
        raise ConfigError(f"{where}: model.name: a study tunes one model; give each model its own study")
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: {key}: expected a mapping such as {{type: float, low: 0.0, high: 0.5}}, "
                          f"got {spec!r:.60}")
    kind = spec.get("type")
    if kind not in PARAM_TYPES:
        raise ConfigError(f"{where}: {key}.type: {kind!r} is not one of {', '.join(map(repr, PARAM_TYPES))}")
    return from_dict(PARAM_TYPES[kind], spec, f"{where}: {key}")  # type: ignore[return-value]


def _check_against_config(space: SearchSpace, base: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> None:
    """Every value the space can produce makes a valid run config (each key alone, on top of the base): an
    unknown key or an out-of-range bound is named now, with the space file."""
    for key, param in space.params.items():
        for value in param.bounds():
            try:
                run_config_from_dict(base, where="config", overrides=[*overrides, *as_overrides({key: value})])
            except ConfigError as exc:
                problem = str(exc).split(": ", 1)[1] if str(exc).startswith("config: ") else str(exc)
                raise ConfigError(f"{space.source}: {key}: the value {yaml_text(value)} does not make a valid run "
                                  f"config ({problem})") from None
