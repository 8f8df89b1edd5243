"""Typed configuration: pydantic models read from YAML and `key=value` overrides.

Every section (`DataConfig`, `TrainerConfig`, `TrackingConfig` here; each model's config beside its model in
`recsys.models`) is a frozen pydantic model (`ConfigModel`) that refuses unknown keys. A key is defined once:
its type, its default, its range (`Field(ge=..., lt=...)`) and its docstring, which is also what `recsys train
--help` and `recsys config show` print for it. A bad key or value, from a YAML file, an override or Python, is
one `ConfigError` line that names the file and the dotted key, e.g. `configs/x.yaml: model.hiden: unknown key
(known: ...)` or `trainer.betas[1]: must be in [0, 1), got 1.0`: `from_dict` and the sections' constructors
turn pydantic's ValidationError (its first error) into that line, never into pydantic's multi-line dump.

Why pydantic rather than jsonargparse: pydantic checks plain data wherever it comes from (a config file, a run
folder's or a saved model's config.yaml, overrides, Python) the same way, without owning the command line,
and it is already installed (FastAPI, which serves models, and MLflow depend on it). jsonargparse would make
the command line the owner of config loading: its own YAML reading and argparse-style errors, where recsys
keeps one line naming file, line and key; a parser per command that would have to know every model's keys
(so import torch) before `--help` could answer; and `section.key=value` overrides and `--resume RUN_DIR`
bent into its shape.

Model sections live next to their models (`recsys.models`); this module knows nothing of them and stays at
the bottom of the import graph.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar, get_args, get_origin

import annotated_types
from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo

from recsys.errors import ConfigError

C = TypeVar("C", bound="ConfigModel")

# Ranges of number keys, checked when a config is built. A value out of range would otherwise reach Lightning
# or torch and fail there with a traceback, or, worse, mean something else (Lightning reads max_epochs=-1 as
# no limit).
Positive = Annotated[int, Field(ge=1)]
NonNegative = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
Probability = Annotated[float, Field(ge=0, le=1)]
Rate = Annotated[float, Field(ge=0, lt=1)]
"""In [0, 1): a dropout or an Adam beta, for which 1 would mean nothing is left."""
Share = Annotated[float, Field(gt=0, le=1)]
"""In (0, 1]: a part of something, at most all of it, never none of it."""

TrainWindows = Literal["last", "all"]
"""trainer.train_windows: which windows of a user's history train the model (see data.batches.training_windows)."""

# Lightning's names (lightning.pytorch's accelerator and strategy registries, its precision inputs), spelled out
# so that loading a config imports no Lightning; tests/test_config.py keeps them equal to Lightning's.
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
STRATEGIES = ("auto", "ddp", "ddp_spawn", "ddp_fork", "ddp_notebook", "ddp_find_unused_parameters_true",
              "ddp_find_unused_parameters_false", "fsdp", "fsdp_cpu_offload", "deepspeed", "single_device")
PRECISIONS = ("auto", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true", "32", "16", "bf16",
              "64")
# A number in exponent notation without a dot, e.g. 5e-5: a float everywhere but in YAML 1.1, which PyYAML follows.
_SCIENTIFIC = re.compile(r"^[+-]?(?:[0-9][0-9_]*\.?[0-9_]*|\.[0-9_]+)[eE][+-]?[0-9]+$")


class _ConfigClass(type(BaseModel)):  # type: ignore[misc]  # pydantic's model metaclass
    """Turns the ValidationError of a config built in Python (`TrainerConfig(batch_size=0)`) into the same one
    ConfigError line a config file gets. On the metaclass, not in `__init__`: pydantic calls a model's own
    `__init__` for every nested sub-config too, where an error must keep its parent's key."""

    def __call__(cls, /, **data: Any) -> Any:
        try:
            return super().__call__(**data)
        except ValidationError as exc:
            error = _config_error(exc, cls, data, "")
            raise BadArgument(str(error)) from None


class ConfigModel(BaseModel, metaclass=_ConfigClass):
    """Base of every config section: frozen, unknown keys refused, strict types (the YAML string "5" is not the
    integer 5; an integer is a float), each key's docstring kept as its description, and every error one
    ConfigError line naming the key."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, use_attribute_docstrings=True)

    shorthand_key: ClassVar[str | None] = None
    """A sub-config that may be written as the value of this one key alone: `loss: ce` is `loss: {name: ce}`."""

    @model_validator(mode="before")
    @classmethod
    def _expand_shorthand(cls, data: Any) -> Any:
        if cls.shorthand_key is not None and isinstance(data, str):
            return {cls.shorthand_key: data}
        return data


class DataConfig(ConfigModel):
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
    valid_quantile: Share = 0.8
    """Temporal split only: interactions before this timestamp quantile train the model."""
    test_quantile: Share = 0.9
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
    order_column: str | None = None
    """custom, basket logs: column of the order (basket, session) id, read to check that one order's rows share
    one time. Items of one order keep the order of the file's rows (Instacart: add_to_cart_order)."""
    order_number_column: str | None = None
    """custom, basket logs without timestamps: column of each user's order number (1, 2, ...). Set, it replaces
    timestamp_column: the timeline is built from order numbers and gaps (see days_since_prior_column)."""
    days_since_prior_column: str | None = None
    """custom, with order_number_column: days since the user's previous order (empty in the first). The timeline
    is then the running sum of the gaps in days (as seconds), plus hour_column's hour; without it, one day per
    order number. Each user's timeline starts at 0, so a global temporal split means nothing on it."""
    hour_column: str | None = None
    """custom, with order_number_column: hour of the day (0-23) of the order, added to its day."""
    duplicates: Literal["drop_exact", "keep"] = "drop_exact"
    """'drop_exact': rows repeating an earlier row's user, item and timestamp are one event logged twice and
    dropped (repeats at other times are always kept); 'keep': keep them too (a log where one item is bought
    twice in one basket at one time)."""
    streaming: bool | Literal["auto"] = "auto"
    """Prepare out of core with polars' streaming engine, in buckets of users, so the log is never held in memory
    (recsys.data.streaming; same result as in memory): true, false, or 'auto': when the ratings file is 512 MiB or
    more on disk (about 20M MovieLens CSV rows). Basket logs, and custom logs with ISO-8601 times or gzipped, are read in memory."""
    text_columns: Annotated[tuple[str, ...], Strict(False)] = ()  # not strict: YAML gives a list
    """custom: item-table columns that describe an item in words (for text models)."""
    separator: str = ","
    """custom: CSV field separator, one character; a tab may be written as \\t or 'tab'."""

    @field_validator("separator")
    @classmethod
    def _one_character(cls, separator: str) -> str:
        if separator in ("\\t", "tab"):  # what a shell passes for --separator '\t'
            return "\t"
        if len(separator.encode("utf-8")) != 1:
            shown = "empty" if not separator else f"{separator!r}"
            raise ValueError(f"must be one character (e.g. ',', ';' or \\t), got {shown}: the CSV reader splits "
                             "on a single byte; convert a log with a longer separator first")
        return separator


Augmentation = Literal["crop", "mask", "reorder"]
"""One of CL4SRec's history augmentations (see data.augment)."""


class ContrastiveConfig(ConfigModel):
    """Contrastive self-supervision beside the next-item loss (training.contrastive): two augmented views of
    every training history, encoded to user vectors, pulled together against the batch's other views by
    InfoNCE. Written as the method alone (`trainer.contrastive=cl4srec`) or as a mapping."""

    shorthand_key = "method"

    method: Literal["none", "cl4srec", "mclrec"] = "none"
    """'none': next-item loss alone; 'cl4srec': plus InfoNCE between two augmented views (Xie et al., ICDE
    2022); 'mclrec': plus learnable augmenters over the views' vectors, updated in alternation with the
    model (Qin et al., SIGIR 2023)."""
    weight: Annotated[float, Field(ge=0)] = 0.1
    """lambda: weight of the InfoNCE loss between the two views, added to the next-item loss (CL4SRec: 0.1)."""
    temperature: PositiveFloat = 1.0
    """tau: InfoNCE logits are similarities divided by it (CL4SRec and MCLRec: 1 with dot products)."""
    similarity: Literal["dot", "cosine"] = "dot"
    """Similarity of two views' vectors in InfoNCE: dot product (the papers' code) or cosine."""
    augmentations: Annotated[tuple[Augmentation, ...], Strict(False)] = ("crop", "mask", "reorder")  # YAML: a list
    """Each view applies one of these, drawn uniformly per history (CL4SRec's random choice among the three)."""
    crop_ratio: Share = 0.6
    """eta: crop keeps a random contiguous floor(eta * n) of a history's n items (at least 1)."""
    mask_ratio: Probability = 0.3
    """gamma: mask hides floor(gamma * n) random items, with the model's mask token, or for models without one
    (the shift objective) by dropping them (the history stays left-padded, as every model reads it)."""
    reorder_ratio: Probability = 0.6
    """beta: reorder shuffles a random contiguous window of floor(beta * n) items (their timestamps stay)."""
    meta_weight: Annotated[float, Field(ge=0)] = 0.1
    """mclrec: weight (MCLRec's beta) of the augmenters' contrastive terms in the model's loss."""
    regularizer_weight: Annotated[float, Field(ge=0)] = 0.1
    """mclrec: weight of MCLRec's margin regulariser, which keeps the positive pair's similarity from running away
    from the hardest negative's (so the augmented views stay informative)."""
    augmenter_hidden: Annotated[tuple[Positive, Positive], Strict(False)] = (32, 16)  # YAML: a list
    """mclrec: widths of each augmenter MLP's two hidden layers (dim -> a -> b -> dim, GELU, unit-length output)."""
    augmenter_lr: PositiveFloat | None = None
    """mclrec: learning rate of the augmenters' AdamW (None: trainer.lr)."""

    @field_validator("augmentations")
    @classmethod
    def _some_distinct_augmentations(cls, augmentations: tuple[str, ...]) -> tuple[str, ...]:
        if not augmentations:
            raise ValueError("needs at least one of 'crop', 'mask', 'reorder'")
        if len(set(augmentations)) != len(augmentations):
            raise ValueError(f"lists an augmentation twice: {list(augmentations)}")
        return augmentations


class TrainerConfig(ConfigModel):
    """How to train: optimisation, stopping, devices, seeds."""

    max_epochs: Positive = 200
    """Upper bound on epochs; early stopping usually ends sooner."""
    batch_size: Positive = 128
    """Sequences per optimiser step, across all processes of a multi-process run (each takes its share)."""
    lr: Annotated[float, Field(ge=0)] = 1e-3  # 0 is allowed: weights that stay put, a test's fixed point
    """Peak learning rate of AdamW."""
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    """AdamW decoupled weight decay."""
    betas: Annotated[tuple[Rate, Rate], Strict(False)] = (0.9, 0.98)  # not strict: YAML gives a list
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
    exclude_history_from_loss: bool = False
    """Leave each position's earlier items out of the training softmax (never its target): the model is then
    trained to rank the target against what evaluation with the history excluded ranks it against. For models
    trained on the next item ('shift') with a softmax loss (ce, sampled_ce) and without a memory term."""
    train_windows: TrainWindows = "last"
    """'last': each user's most recent max_len items (the papers'); 'all': older history too, in more windows."""
    bucket_by_length: bool = True
    """Group training windows of similar length into batches (each batch is trimmed to its longest window):
    the same data and model, far fewer padded positions to compute; batch order stays random."""
    eval_batch_size: Positive = 512
    """Users per batch when scoring the full catalogue."""
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = 42
    """Seed of every random generator (data order, init, dropout, negatives)."""
    accelerator: Literal[ACCELERATORS] = "auto"  # type: ignore[valid-type]
    """Lightning accelerator: 'cpu', 'gpu' or 'auto'."""
    devices: Positive | Literal["auto"] = 1
    """Lightning devices per node: a count, or 'auto'."""
    num_nodes: Positive = 1
    """Machines the run spans (Lightning's num_nodes): > 1 needs a launcher that starts trainer.devices processes
    on each node, torchrun or SLURM's srun (README 'On a cluster'); checked against WORLD_SIZE/SLURM_NTASKS."""
    strategy: Literal[STRATEGIES] = "auto"  # type: ignore[valid-type]
    """Lightning strategy, e.g. 'ddp' (with accelerator cpu: gloo processes); 'fsdp' shards the weights and
    optimiser state across GPUs, for item tables too large for one (CUDA only)."""
    precision: Literal[PRECISIONS] = "auto"  # type: ignore[valid-type]
    """'auto' = bf16 mixed precision on a GPU that supports it, else 32-bit; or any Lightning precision string."""
    num_workers: NonNegative = 0
    """DataLoader worker processes."""
    threads: Positive | None = None
    """torch CPU threads (None: the cores this process may use, from its CPU affinity and cgroup quota)."""
    limit_train_batches: Positive | Share = 1.0
    """Fraction (a float) or number (an integer) of training batches per epoch, for quick runs."""
    progress_bar: bool = True
    """Show a progress bar."""
    contrastive: ContrastiveConfig = ContrastiveConfig()
    """Contrastive self-supervision added to the model's loss: off ('none') by default; 'cl4srec' or 'mclrec'."""

    @model_validator(mode="after")
    def _cooldown_is_its_own_decay(self) -> TrainerConfig:
        if self.cooldown_epochs and self.lr_decay != "none":
            raise FieldError("cooldown_epochs", f"needs lr_decay: none (a cool-down is its own decay), got "
                             f"lr_decay: {self.lr_decay}")
        return self


class TrackingConfig(ConfigModel):
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


TimeContext = Literal["none", "target"]


class EvaluationConfig(ConfigModel):
    """How validation and test score a model."""

    time_context: TimeContext = "none"
    """When a model that reads timestamps (hstu, actr) is asked for the next item at evaluation. 'none': at the history's last
    interaction, with nothing known of the target (what a request knows without its own clock; the honest
    default). 'target': at the target interaction's timestamp, as a served request is asked at its own time
    ('at'); it uses the target's timestamp, information the history does not have, and every result says
    so. Validation (model selection) and the test metrics use it; the test is also scored the other way, as
    test_time_none_* / test_time_target_*. Only for models that read timestamps."""
    exclude_seen: bool = True
    """true: items of the user's history are left out of the ranking (the target never is), so a model is
    judged on new items. false: every item is ranked, history included, as a log of repeat consumption
    (groceries, music) needs: "buy again" is then a fair answer. Validation, the test, `recsys evaluate`
    (whose --include-seen sets it false) and every result line say which. Either way the metrics are also
    split into repeat targets (the target is in the user's history: repeat_*) and explore targets (new to
    the user: explore_*), with repeat_share, the share of repeat targets."""


# The sections of a run config that are plain config classes, in the order help lists them (the model
# section's class depends on model.name: recsys.run_config).
PLAIN_SECTIONS: tuple[tuple[str, type[ConfigModel]], ...] = (
    ("data", DataConfig), ("trainer", TrainerConfig), ("evaluation", EvaluationConfig), ("tracking", TrackingConfig))


# ---------------------------------------------------------------------------------------------------------
# Building configs from plain data, and plain data from configs


def from_dict(cls: type[C], data: Any, where: str = "") -> C:
    """Build the config `cls` from a mapping, checking keys, types and ranges.

    `where` is a prefix for messages, e.g. "configs/x.yaml: model" so errors read
    "configs/x.yaml: model.n_layers: expected an integer, got 'two'".
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping of keys, got {_show(data)}")
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise _config_error(exc, cls, data, where) from None


def to_dict(obj: ConfigModel) -> dict[str, Any]:
    """A config as plain, YAML-safe data (sub-configs become mappings, tuples lists): `from_dict` reads it back."""
    return _plain(obj.model_dump())


def replace(obj: C, **changes: Any) -> C:
    """A copy of the config `obj` with `changes`, checked like any other (what dataclasses.replace was)."""
    return type(obj)(**{**dict(obj), **changes})


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
        data = yaml.load(text, Loader=_yaml_loader())  # noqa: S506 - a SafeLoader (see _yaml_loader)
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


def parse_value(text: str) -> Any:
    """A value typed on the command line, read as a YAML scalar or flow collection, as a config file would
    read it (`5` an integer, `5e-5` a number, `[0.9, 0.98]` a list, `null` None); text YAML cannot read stays
    the text. An empty value is None."""
    import yaml

    if not text.strip():
        return None
    try:
        return yaml.load(text, Loader=_yaml_loader())  # noqa: S506 - a SafeLoader
    except yaml.YAMLError:
        return text


def parse_override(item: str) -> tuple[list[str], Any]:
    """`section.key=value` -> (["section", "key"], value read by `parse_value`)."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {item!r}: expected key=value, e.g. trainer.max_epochs=5")
    return key.split("."), parse_value(raw)


def set_key(data: dict[str, Any], parts: list[str], value: Any) -> None:
    """Set the nested key `parts` of `data` to `value`, making the sections on the way."""
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {'.'.join(parts)}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.key=value` overrides (values read by `parse_value`) to a copy of nested config data.

    Unknown keys are not judged here: `from_dict` rejects them with the full dotted name.
    """
    result = _deep_copy(data)
    for item in overrides:
        set_key(result, *parse_override(item))
    return result


@functools.cache
def _yaml_loader() -> type:
    """PyYAML's SafeLoader (plain data only, no Python objects), reading 5e-5 as the number it is.

    PyYAML follows YAML 1.1, where a float needs a dot (5.0e-5), so 5e-5 would be the string "5e-5"; YAML 1.2
    and every other reader take it for a number, and so does a user who writes lr: 5e-5."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", _SCIENTIFIC, list("-+0123456789."))
    return Loader


# ---------------------------------------------------------------------------------------------------------
# Keys as `--help` shows them


@dataclasses.dataclass(frozen=True)
class KeyHelp:
    """One key of a config, as help lists it."""

    key: str
    """Dotted, as an override writes it: trainer.max_epochs, model.loss.name."""
    type: str
    """What it takes: `int >= 1`, `'last' | 'all'`, `float in (0, 1] | null`."""
    default: str
    """The default, written as YAML would (null, true, [0.9, 0.98]); '' for a sub-config."""
    doc: str
    """The key's docstring."""


def describe_keys(cls: type[ConfigModel], prefix: str = "") -> list[KeyHelp]:
    """Every key of the config `cls` (and of its sub-configs) with its type, default and docstring."""
    keys: list[KeyHelp] = []
    for name, field in cls.model_fields.items():
        hint = _field_hint(field)
        sub = _config_class(hint)
        doc = " ".join((field.description or "").split())
        if sub is not None:
            written = f"a mapping, or its {sub.shorthand_key} alone" if sub.shorthand_key else "a mapping"
            keys.append(KeyHelp(prefix + name, f"{sub.__name__}: {written}", "", doc))
            keys.extend(describe_keys(sub, f"{prefix}{name}."))
        else:
            keys.append(KeyHelp(prefix + name, _type_text(hint), yaml_text(field.default), doc))
    return keys


def _type_text(hint: Any) -> str:
    base = _base(hint)
    if get_origin(base) is Literal:
        text = " | ".join(map(repr, get_args(base)))
    elif _is_union(base):
        text = " | ".join(_type_text(arg) for arg in get_args(base))
    elif get_origin(base) is tuple:
        args = get_args(base)
        items = [_type_text(args[0]), "..."] if len(args) == 2 and args[1] is Ellipsis else map(_type_text, args)
        text = f"[{', '.join(items)}]"
    elif base is type(None):
        text = "null"
    else:
        text = getattr(base, "__name__", str(base))
    bounds = _range_text(_constraints(hint), compact=True)
    return f"{text} {bounds}" if bounds else text


def yaml_text(value: Any) -> str:
    """A value as a config file writes it (null, true, [0.9, 0.98], quoted where YAML would read it otherwise)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return f"[{', '.join(map(yaml_text, value))}]"
    if isinstance(value, str):
        plain = value and value.strip() == value and parse_value(value) == value and not set(value) & set(",[]{}#:'\"")
        return value if plain else "'" + value.replace("'", "''") + "'"
    return repr(value)


# ---------------------------------------------------------------------------------------------------------
# pydantic's errors as one line naming the key


class FieldError(ConfigError, ValueError):
    """A bad value of one field, found by a config class's own check (a validator); the error line names it
    in full, e.g. trainer.cooldown_epochs."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field, self.problem = field, problem


class BadArgument(ConfigError, ValueError):
    """A config built in Python with a bad value: the same line a config file gets, and, as a bad argument of
    a constructor, a ValueError."""


_RANGE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}
_EXPECTED = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number", "finite_number": "a finite number",
    "bool_type": "true or false", "bool_parsing": "true or false",
    "string_type": "a string",
    "tuple_type": "a list", "list_type": "a list",
    "model_type": "a mapping of keys", "dict_type": "a mapping of keys", "model_attributes_type": "a mapping of keys",
}


@dataclasses.dataclass
class _Place:
    """Where in a config an error is: the dotted key a user writes and the type expected there."""

    key: str = ""
    hint: Any = None
    owner: type[ConfigModel] | None = None
    """The config class whose key it is (for the list of known keys)."""
    union_depth: int | None = None
    """Where the value met a union: the position in pydantic's error location of its branch's tag."""
    list_sizes: tuple[int, int] | None = None
    """(expected, given) items of a fixed-size list that was given too few."""


def _config_error(exc: ValidationError, cls: type[ConfigModel], data: Any, where: str) -> ConfigError:
    errors = exc.errors(include_url=False)
    first = errors[0]
    place = _place(cls, data, first["loc"])
    if place.union_depth is not None:
        depth = place.union_depth
        branches = [e for e in errors if len(e["loc"]) > depth and e["loc"][:depth] == first["loc"][:depth]]
        key, problem = place.key, _union_problem(place.hint, branches, depth)
    else:
        extra, problem = _problem(first, place)
        key = _join(place.key, extra) if extra else place.key
    return ConfigError(f"{_key(where, key)}: {problem}" if key else f"{where or cls.__name__}: {problem}")


def _place(cls: type[ConfigModel], data: Any, loc: tuple[int | str, ...]) -> _Place:
    """Follow pydantic's error location through the config classes and their types."""
    place = _Place(hint=cls)
    raw = data
    for depth, part in enumerate(loc):
        hint = _strip_none(place.hint)
        base = _base(hint)
        if isinstance(base, type) and issubclass(base, ConfigModel):
            place.owner = base
            field = base.model_fields.get(str(part))
            written_alone = base.shorthand_key == part and not isinstance(raw, dict)
            if not written_alone:  # `loss: mse` is reported as model.loss, not model.loss.name
                place.key = _join(place.key, str(part))
            if field is None:  # an unknown key
                place.hint = None
                return place
            place.hint = _field_hint(field)
            raw = raw.get(part) if isinstance(raw, dict) else None
        elif get_origin(base) is tuple and isinstance(part, int):
            args = get_args(base)
            variadic = len(args) == 2 and args[1] is Ellipsis
            place.hint = args[0] if variadic else args[part] if part < len(args) else None
            if not variadic and isinstance(raw, (list, tuple)) and part >= len(raw):
                place.list_sizes = (len(args), len(raw))  # reported at the list, not at an item it lacks
                return place
            place.key += f"[{part}]"
            raw = raw[part] if isinstance(raw, (list, tuple)) and part < len(raw) else None
        elif _is_union(base):
            place.hint, place.union_depth = hint, depth
            return place
        else:
            return place
    place.hint = _strip_none(place.hint)
    return place


def _problem(error: Any, place: _Place) -> tuple[str, str]:
    """(a key below the place, if the error is about one; the problem) of one pydantic error."""
    kind, value = error["type"], error.get("input")
    base = _base(place.hint)
    if kind == "extra_forbidden":
        known = sorted(place.owner.model_fields) if place.owner is not None else []
        return "", f"unknown key (known: {', '.join(known)})"
    if kind == "missing" and place.list_sizes is not None:
        return "", "expected a list of {} values, got {}".format(*place.list_sizes)
    if kind == "missing":
        return "", "missing key"
    if kind == "literal_error" and get_origin(base) is Literal:
        return "", f"{_show(value)} is not one of {', '.join(map(repr, get_args(base)))}"
    if kind in _RANGE_ERRORS:
        return "", _out_of_range(place.hint, value)
    if kind in ("too_long", "too_short") and get_origin(base) is tuple:
        return "", f"expected a list of {len(get_args(base))} values, got {len(value)}"
    if kind in ("model_type", "dict_type") and isinstance(base, type) and issubclass(base, ConfigModel):
        alone = f"a {base.shorthand_key} or " if base.shorthand_key else ""
        return "", f"expected {alone}a mapping of keys, got {_show(value)}"
    if kind in _EXPECTED:
        return "", f"expected {_EXPECTED[kind]}, got {_show(value)}"
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, FieldError):
        return cause.field, cause.problem
    if cause is not None:
        return "", str(cause)
    return "", str(error["msg"]).splitlines()[0]


def _union_problem(hint: Any, errors: list[Any], depth: int) -> str:
    """A value that matched no branch of a union (`int >= 1 | 'auto'`): the range it missed, when it was of a
    branch's type (the last such branch, as with `int >= 1 | float in (0, 1]`), else the types it could be."""
    branches = [arg for arg in get_args(_base(hint)) if arg is not type(None)]
    tags: list[Any] = []
    for error in errors:
        if error["loc"][depth] not in tags:
            tags.append(error["loc"][depth])
    out_of_range = [e for e in errors if e["type"] in _RANGE_ERRORS]
    if out_of_range:  # pydantic reports the branches in order, one error each for these scalar branches
        error = out_of_range[-1]
        index = tags.index(error["loc"][depth])
        return _out_of_range(branches[index] if index < len(branches) else None, error["input"])
    names = [f"one of {', '.join(map(repr, get_args(_base(a))))}" if get_origin(_base(a)) is Literal
             else getattr(_base(a), "__name__", str(a)) for a in branches]
    nullable = type(None) in get_args(_base(hint))
    return f"expected {' or '.join(names)}{' or null' if nullable else ''}, got {_show(errors[0]['input'])}"


def _out_of_range(hint: Any, value: Any) -> str:
    if _base(hint) is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)  # what the key holds: 0 given to a float key is 0.0
    return f"must be {_range_text(_constraints(hint)) or 'in its range'}, got {_show(value)}"


def _range_text(bounds: dict[str, float], compact: bool = False) -> str:
    """'at least 1' (compact, for help: '>= 1'), 'greater than 0', or with both ends 'in [0, 1)'."""
    low = bounds.get("ge", bounds.get("gt"))
    high = bounds.get("le", bounds.get("lt"))
    if low is None and high is None:
        return ""
    if high is None:
        words = (">" if compact else "greater than") if "gt" in bounds else (">=" if compact else "at least")
        return f"{words} {_number(low)}"
    if low is None:
        words = ("<" if compact else "less than") if "lt" in bounds else ("<=" if compact else "at most")
        return f"{words} {_number(high)}"
    return f"in {'(' if 'gt' in bounds else '['}{_number(low)}, {_number(high)}{')' if 'lt' in bounds else ']'}"


def _constraints(hint: Any) -> dict[str, float]:
    """The ge/gt/le/lt bounds of a type, from its Annotated metadata (Field(ge=...) or annotated_types)."""
    bounds: dict[str, float] = {}
    while get_origin(hint) is Annotated:
        hint, *metadata = get_args(hint)
        for meta in metadata:
            for item in meta.metadata if isinstance(meta, FieldInfo) else [meta]:
                for name, kind in (("ge", annotated_types.Ge), ("gt", annotated_types.Gt),
                                   ("le", annotated_types.Le), ("lt", annotated_types.Lt)):
                    if isinstance(item, kind):
                        bounds[name] = getattr(item, name)
    return bounds


def _field_hint(field: FieldInfo) -> Any:
    """A field's type with its constraints, as one Annotated type."""
    return Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation


def _base(hint: Any) -> Any:
    while get_origin(hint) is Annotated:
        hint = get_args(hint)[0]
    return hint


def _is_union(hint: Any) -> bool:
    return get_origin(hint) in (typing.Union, types.UnionType)


def _strip_none(hint: Any) -> Any:
    """`X | None` -> X (pydantic reports it as X), while a union of several types stays a union."""
    base = _base(hint)
    if _is_union(base):
        options = [a for a in get_args(base) if a is not type(None)]
        if len(options) == 1:
            return options[0]
    return hint


def _config_class(hint: Any) -> type[ConfigModel] | None:
    base = _base(_strip_none(hint))
    return base if isinstance(base, type) and issubclass(base, ConfigModel) else None


def _number(value: float | None) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


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
