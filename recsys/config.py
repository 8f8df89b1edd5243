"""Typed configuration: frozen dataclasses read from YAML and `key=value` overrides.

Every section is a frozen dataclass whose fields carry their type and default. `from_dict` builds one from
plain data and rejects unknown keys and values of the wrong type with a one-line `ConfigError` that names
the file and the dotted key (never RecBole's silent `None`). Model sections live next to their models
(`recsys.models`); this module knows nothing of them and stays at the bottom of the import graph.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

from recsys.errors import ConfigError

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Range:
    """The allowed range of a number field, checked when a config is built: `Annotated[int, Range(1)]`.
    A value out of range would otherwise reach Lightning or torch and fail there with a traceback, or, worse,
    mean something else (Lightning reads max_epochs=-1 as no limit)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    """low itself is not allowed (grad_clip > 0)"""
    high_open: bool = False

    def problem(self, value: float) -> str | None:
        below = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        above = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        return f"must be {self.describe()}, got {value!r}" if below or above else None

    def describe(self) -> str:
        if self.high is None:
            return f"{'greater than' if self.low_open else 'at least'} {_number(self.low)}"
        if self.low is None:
            return f"{'less than' if self.high_open else 'at most'} {_number(self.high)}"
        return (f"in {'(' if self.low_open else '['}{_number(self.low)}, {_number(self.high)}"
                f"{')' if self.high_open else ']'}")


def _number(value: float | None) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


Positive = Annotated[int, Range(1)]
NonNegative = Annotated[int, Range(0)]
PositiveFloat = Annotated[float, Range(0, low_open=True)]

# Lightning's names (lightning.pytorch's accelerator and strategy registries, its precision inputs), spelled out
# so that loading a config imports no Lightning; tests/test_config.py keeps them equal to Lightning's.
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
STRATEGIES = ("auto", "ddp", "ddp_spawn", "ddp_fork", "ddp_notebook", "ddp_find_unused_parameters_true",
              "ddp_find_unused_parameters_false", "fsdp", "fsdp_cpu_offload", "deepspeed", "single_device")
PRECISIONS = ("auto", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true", "32", "16", "bf16",
              "64")
# A number in exponent notation without a dot, e.g. 5e-5: a float everywhere but in YAML 1.1, which PyYAML follows.
_SCIENTIFIC = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which interactions to read and how to turn them into sequences and a split."""

    name: str = "ml-latest-small"
    """Dataset: a MovieLens release (ml-100k, ml-1m, ml-10m, ml-20m, ml-25m, ml-32m, ml-latest-small) or 'custom'."""
    path: str | None = None
    """Folder or zip of the raw files. None: the embedded ml-latest-small, or the folder data_scripts prepared."""
    preset: str = "raw"
    """Named preprocessing preset: 'raw' (every rating is an interaction) or 'papers' (items with < 5 interactions dropped)."""
    min_rating: float | None = None
    """Keep only interactions whose rating is at least this (None: keep all; implicit feedback)."""
    min_user_interactions: NonNegative | None = None
    """Drop users with fewer interactions than this (None: the preset's value)."""
    min_item_interactions: NonNegative | None = None
    """Drop items with fewer interactions than this (None: the preset's value)."""
    core: Literal["single", "iterated"] = "single"
    """'single': filter items then users once (the papers' protocol); 'iterated': repeat until a stable k-core."""
    max_history: Positive | None = None
    """Keep only each user's most recent N interactions (None: all)."""
    split: Literal["leave_one_out", "temporal"] = "leave_one_out"
    """'leave_one_out': last item test, second-to-last validation; 'temporal': global cut at timestamp quantiles."""
    valid_quantile: Annotated[float, Range(0, 1, low_open=True)] = 0.8
    """Temporal split only: interactions before this timestamp quantile train the model."""
    test_quantile: Annotated[float, Range(0, 1, low_open=True)] = 0.9
    """Temporal split only: the first interaction of each user after this quantile is the test target."""
    cache_dir: str | None = None
    """Where prepared datasets are cached as Parquet (None: $RECSYS_CACHE or ~/.cache/recsys)."""
    # A user's own log (name: custom)
    interactions_file: str | None = None
    """custom: CSV or Parquet file of interactions."""
    items_file: str | None = None
    """custom: optional CSV or Parquet item table (item id plus text columns)."""
    user_column: str = "user_id"
    """custom: column of user ids."""
    item_column: str = "item_id"
    """custom: column of item ids (in both files)."""
    timestamp_column: str = "timestamp"
    """custom: column of timestamps (numbers, or ISO dates)."""
    rating_column: str | None = None
    """custom: optional column of ratings (needed for min_rating)."""
    text_columns: tuple[str, ...] = ()
    """custom: item-table columns that describe an item in words (for text models)."""
    separator: str = ","
    """custom: CSV field separator, one character; a tab may be written as \\t or 'tab'."""

    def __post_init__(self) -> None:
        check_fields(self)
        if self.separator in ("\\t", "tab"):  # what a shell passes for --separator '\t'
            object.__setattr__(self, "separator", "\t")
        if len(self.separator.encode("utf-8")) != 1:
            shown = "empty" if not self.separator else f"{self.separator!r}"
            raise FieldError("separator", f"must be one character (e.g. ',', ';' or \\t), got {shown}: the CSV "
                             "reader splits on a single byte; convert a log with a longer separator first")


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
    """How to train: optimisation, stopping, devices, seeds."""

    max_epochs: Positive = 200
    """Upper bound on epochs; early stopping usually ends sooner."""
    batch_size: Positive = 128
    """Sequences per optimiser step."""
    lr: Annotated[float, Range(0)] = 1e-3  # 0 is allowed: weights that stay put, a test's fixed point
    """Peak learning rate of AdamW."""
    weight_decay: Annotated[float, Range(0)] = 0.0
    """AdamW decoupled weight decay."""
    betas: tuple[Annotated[float, Range(0, 1, high_open=True)], Annotated[float, Range(0, 1, high_open=True)]] = (
        0.9, 0.98)
    """AdamW betas."""
    warmup_steps: NonNegative = 0
    """Linear learning-rate warm-up over this many optimiser steps."""
    lr_decay: Literal["none", "linear", "cosine"] = "none"
    """Learning-rate decay after warm-up, to zero at max_epochs."""
    grad_clip: PositiveFloat | None = 1.0
    """Clip the gradient norm to this value (None: no clipping)."""
    patience: NonNegative = 10
    """Stop after this many validation checks without a better validation NDCG@10 (0: never stop early)."""
    cooldown_epochs: NonNegative = 0
    """After early stopping (or max_epochs), go back to the best epoch's weights and train this many more
    epochs with the learning rate falling linearly from lr to zero, validating each; the best validated epoch
    of the whole run is kept (0: no cool-down). A constant rate leaves the weights rattling around a good
    point; annealing at the end settles them (needs lr_decay: none)."""
    max_minutes: PositiveFloat | None = None
    """Stop training after this many minutes of fitting, keeping the best epoch so far (None: no time limit)."""
    val_every: Positive = 1
    """Validate every N epochs."""
    popularity_correction: bool = False
    """Train on logits plus log(training popularity) of each item (logQ correction, Yi et al., RecSys 2019), so
    that the model's own scores leave popularity out: what it learns is which items follow a history beyond
    what is popular anyway. For a model used on another catalogue (whose popularity it cannot know); it
    lowers in-domain metrics, which are scored without the correction."""
    train_windows: Literal["last", "all"] = "last"
    """'last': each user's most recent max_len items (the papers'); 'all': older history too, in more windows."""
    bucket_by_length: bool = True
    """Group training windows of similar length into batches (each batch is trimmed to its longest window):
    the same data and model, far fewer padded positions to compute; batch order stays random."""
    eval_batch_size: Positive = 512
    """Users per batch when scoring the full catalogue."""
    seed: Annotated[int, Range(0, 2**32 - 1)] = 42
    """Seed of every random generator (data order, init, dropout, negatives)."""
    accelerator: Literal[ACCELERATORS] = "auto"  # type: ignore[valid-type]
    """Lightning accelerator: 'cpu', 'gpu' or 'auto'."""
    devices: Positive | Literal["auto"] = 1
    """Lightning devices: a count, or 'auto'."""
    strategy: Literal[STRATEGIES] = "auto"  # type: ignore[valid-type]
    """Lightning strategy, e.g. 'ddp' (with accelerator cpu: gloo processes)."""
    precision: Literal[PRECISIONS] = "auto"  # type: ignore[valid-type]
    """'auto' = bf16 mixed precision on a GPU that supports it, else 32-bit; or any Lightning precision string."""
    num_workers: NonNegative = 0
    """DataLoader worker processes."""
    threads: Positive | None = None
    """torch CPU threads (None: the cores this process may use, from its CPU affinity and cgroup quota)."""
    limit_train_batches: Positive | Annotated[float, Range(0, 1, low_open=True)] = 1.0
    """Fraction or number of training batches per epoch (for quick runs)."""
    progress_bar: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        check_fields(self)
        if self.cooldown_epochs and self.lr_decay != "none":
            raise ValueError(f"cooldown_epochs needs lr_decay: none (a cool-down is its own decay), "
                             f"got lr_decay: {self.lr_decay}")


@dataclasses.dataclass(frozen=True)
class TrackingConfig:
    """Where runs, checkpoints and models go."""

    tracking_uri: str | None = None
    """MLflow tracking URI (None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory)."""
    experiment: str | None = None
    """MLflow experiment (None: one per dataset, 'recsys-<dataset>')."""
    run_name: str | None = None
    """MLflow run name (None: '<model>-<dataset>-<preset>-<time>')."""
    output_dir: str = "runs"
    """Each run writes checkpoints and the saved model to a new folder below this one."""
    register_as: str | None = None
    """Register the saved model in the MLflow model registry under this name."""
    enabled: bool = True
    """Log to MLflow at all."""


# ---------------------------------------------------------------------------------------------------------
# Building dataclasses from plain data, with errors that name the key


def from_dict(cls: type[T], data: Any, where: str = "") -> T:
    """Build the dataclass `cls` from a mapping, checking keys and value types.

    `where` is a prefix for messages, e.g. "configs/x.yaml: model" so errors read
    "configs/x.yaml: model.n_layers: expected int, got 'two'".
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping of keys, got {_show(data)}")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{_key(where, unknown[0])}: unknown key (known: {', '.join(sorted(fields))})"
        )
    values = {name: _coerce(hints[name], value, _key(where, name)) for name, value in data.items()}
    try:
        obj = cls(**values)
    except FieldError as exc:
        raise ConfigError(f"{_key(where, exc.field)}: {exc.problem}") from None
    except (TypeError, ValueError) as exc:  # a __post_init__ check
        raise ConfigError(f"{where or cls.__name__}: {exc}") from None
    return obj


def check_fields(obj: Any) -> None:
    """Check a config dataclass built in Python (not from YAML) as `from_dict` would: types and ranges.

    Called from `__post_init__`, so `TrainerConfig(batch_size=0)` fails at once with the field's name, not
    in the middle of a run."""
    hints = typing.get_type_hints(type(obj), include_extras=True)
    for field in dataclasses.fields(obj):
        _coerce(hints[field.name], getattr(obj, field.name), field.name)


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as plain, YAML-safe data (tuples become lists)."""
    return _plain(dataclasses.asdict(obj))


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`: the shape MLflow params and overrides use."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file and line."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a YAML text file (byte {exc.start} is not UTF-8 text)") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        position = getattr(exc, "position", None)  # a character YAML refuses to read at all has no mark
        number = mark.line + 1 if mark is not None else text.count("\n", 0, position) + 1 if position is not None else None
        line = f" line {number}:" if number is not None else ""
        problem = getattr(exc, "problem", None) or getattr(exc, "reason", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}:{line} invalid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top, got {_show(data)}")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.key=value` overrides (values parsed as YAML scalars) to nested config data.

    Unknown keys are not judged here: `from_dict` rejects them with the full dotted name.
    """
    import yaml

    result = _deep_copy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. trainer.max_epochs=5")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = result
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {key}: {part!r} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return result


def _coerce(hint: Any, value: Any, key: str) -> Any:
    """Check `value` against the type `hint`, converting only where it is lossless (int -> float, list -> tuple)."""
    origin = get_origin(hint)
    if hint is Any:
        return value
    if origin is Annotated:
        base, *metadata = get_args(hint)
        value = _coerce(base, value, key)
        for meta in metadata:
            problem = meta.problem(value) if isinstance(meta, Range) else None
            if problem:
                raise _OutOfRange(f"{key}: {problem}")
        return value
    if origin is Literal:
        choices = get_args(hint)
        if value not in choices:
            raise ConfigError(f"{key}: {_show(value)} is not one of {', '.join(map(repr, choices))}")
        return value
    if origin in (typing.Union, types.UnionType):
        options = get_args(hint)
        if value is None and type(None) in options:
            return None
        out_of_range = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, key)
            except _OutOfRange as exc:
                out_of_range.append(exc)
            except ConfigError:
                continue
        if out_of_range:  # the right type, a wrong value: say which values are allowed
            raise out_of_range[-1]
        raise ConfigError(f"{key}: expected {_type_name(hint)}, got {_show(value)}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {_show(value)}")
        args = get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {len(value)}")
        return tuple(_coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {_show(value)}")
        return dict(value)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, key)  # type: ignore[arg-type]
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {_show(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {_show(value)}")
        return value
    if hint is float:
        if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads 5e-5 (no dot in the mantissa) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {_show(value)}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {_show(value)}")
        return value
    raise ConfigError(f"{key}: unsupported config type {hint!r}")  # a bug in a config class


class FieldError(ConfigError, ValueError):
    """A bad value of one field, found by a config class's own check; `from_dict` names it in full."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field, self.problem = field, problem


class _OutOfRange(ConfigError):
    """A value of the right type outside its field's Range."""


def _type_name(hint: Any) -> str:
    args = [get_args(a)[0] if get_origin(a) is Annotated else a for a in get_args(hint) if a is not type(None)]
    names = [f"one of {', '.join(map(repr, get_args(a)))}" if get_origin(a) is Literal else getattr(a, "__name__", str(a))
             for a in args]
    return " or ".join(names) + (" or null" if type(None) in get_args(hint) else "")


def _key(where: str, name: str) -> str:
    return f"{where}.{name}" if where and not where.endswith(":") else f"{where} {name}".strip()


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _deep_copy(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in data.items()}
