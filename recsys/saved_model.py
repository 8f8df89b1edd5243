"""The saved-model directory: everything needed to recommend, without the training data or pickle.

Layout (format version 1):
    manifest.json        format, version, model name, sizes, and the sha256 of every other file
    config.yaml          the full run config
    weights.safetensors  the model's state dict (no pickle: loading never executes code)
    item_map.parquet     item_idx <-> original item_id
    user_map.parquet     user_idx <-> original user_id
    items.parquet        the item table (titles, genres, ...)
    histories.parquet    user_idx, items, timestamps: each known user's whole sequence, so `recommend(user=...)`
                         works (for models that read time, with its times); directories saved before
                         timestamps were kept lack the column and still load: their users go without times
    metrics.json         validation and test metrics of the run
    backbone/...         only for models that need more than weights (a text model's tokenizer and encoder
                         config): the model's `bundle()`, checksummed like the rest

A directory is written to a temporary sibling (`.<name>.<pid>.<random>.tmp`), fsynced, then renamed into
place, so a crash or a failed write never leaves a half-written model that loads as if whole: a temporary
folder is refused at load, and the next save into the same folder removes those whose writer is gone. At load
the manifest's checksums are verified, and the weights' shapes are checked against the config (`load_weights`).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import torch

from recsys import __version__
from recsys.data.io import sha256_file
from recsys.durable import TMP_SUFFIX, folder_beside, publish_folder, remove_abandoned_folders
from recsys.errors import ModelLoadError
from recsys.models.base import SequenceModel

FORMAT = "recsys-model"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"
CONFIG = "config.yaml"
ITEM_MAP = "item_map.parquet"
USER_MAP = "user_map.parquet"
ITEMS = "items.parquet"
HISTORIES = "histories.parquet"
METRICS = "metrics.json"
REQUIRED = (WEIGHTS, CONFIG, ITEM_MAP, USER_MAP, ITEMS, HISTORIES, METRICS)


@dataclass
class SavedModel:
    """What a model directory holds, in memory."""

    model_name: str
    config: dict[str, Any]  # the run config as plain data (RunConfig.to_dict())
    state_dict: dict[str, torch.Tensor]
    n_items: int
    item_map: pl.DataFrame
    user_map: pl.DataFrame
    items: pl.DataFrame
    histories: pl.DataFrame
    metrics: dict[str, Any]
    extra: dict[str, Any]  # manifest fields such as the dataset fingerprint
    bundle: dict[str, Path] = field(default_factory=dict)  # relative name in the directory -> file to copy there


def save_model(saved: SavedModel, directory: str | Path) -> Path:
    """Write `saved` to `directory` atomically; an existing directory there is never overwritten."""
    import yaml
    from safetensors.torch import save_file

    directory = Path(directory)
    if directory.exists():
        raise ModelLoadError(f"{directory}: already exists; a saved model is never overwritten")
    remove_abandoned_folders(directory)
    with folder_beside(directory) as tmp:
        state = {k: v.detach().to("cpu").contiguous() for k, v in saved.state_dict.items()}
        save_file(state, str(tmp / WEIGHTS))
        (tmp / CONFIG).write_text(yaml.safe_dump(saved.config, sort_keys=False), encoding="utf-8")
        saved.item_map.write_parquet(tmp / ITEM_MAP)
        saved.user_map.write_parquet(tmp / USER_MAP)
        saved.items.write_parquet(tmp / ITEMS)
        saved.histories.write_parquet(tmp / HISTORIES)
        (tmp / METRICS).write_text(json.dumps(saved.metrics, indent=2, sort_keys=True), encoding="utf-8")
        bundled = _copy_bundle(saved.bundle, tmp)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "recsys_version": __version__,
            "model": saved.model_name,
            "n_items": saved.n_items,
            "n_users": saved.user_map.height,
            "shapes": {k: list(v.shape) for k, v in state.items()},
            "files": {name: sha256_file(tmp / name) for name in (*REQUIRED, *bundled)},
            **({"bundle": bundled} if bundled else {}),
            **saved.extra,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        publish_folder(tmp, directory)  # fsynced, then renamed in one step; never over an existing folder
    return directory


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The manifest, checked for format and version; errors name the directory and the problem."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelLoadError(f"{directory}: no such model directory")
    if directory.name.startswith(".") and directory.name.endswith(TMP_SUFFIX):
        raise ModelLoadError(f"{directory}: an unfinished save (a temporary folder), not a model directory")
    path = directory / MANIFEST
    if not path.is_file():
        raise ModelLoadError(f"{directory}: not a recsys model directory (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path}: corrupt manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ModelLoadError(f"{path}: not a recsys model manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelLoadError(
            f"{directory}: model format version {version} is not supported by recsys {__version__} "
            f"(it reads version {FORMAT_VERSION}); retrain or use the recsys version that wrote it"
        )
    return manifest


def load_model_files(directory: str | Path, verify: bool = True) -> SavedModel:
    """Read a model directory written by `save_model`, verifying checksums and tensor shapes."""
    import yaml
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    manifest = read_manifest(directory)
    for name in REQUIRED:
        if not (directory / name).is_file():
            raise ModelLoadError(f"{directory}: missing file {name}")
        expected = manifest.get("files", {}).get(name)
        if verify and expected != sha256_file(directory / name):
            raise ModelLoadError(f"{directory / name}: checksum does not match the manifest (file changed or corrupt)")
    try:
        state = load_file(str(directory / WEIGHTS))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(f"{directory / WEIGHTS}: not a valid safetensors file ({exc})") from None
    for key, shape in manifest.get("shapes", {}).items():
        if key not in state or list(state[key].shape) != shape:
            got = list(state[key].shape) if key in state else "missing"
            raise ModelLoadError(f"{directory / WEIGHTS}: tensor {key} has shape {got}, manifest says {shape}")
    bundle = _check_bundle(directory, manifest, verify)
    extra = {k: v for k, v in manifest.items()
             if k not in {"format", "format_version", "files", "shapes", "model", "n_items", "n_users", "bundle"}}
    try:
        saved = SavedModel(
            model_name=manifest["model"],
            config=yaml.safe_load((directory / CONFIG).read_text(encoding="utf-8")),
            state_dict=state,
            n_items=int(manifest["n_items"]),
            item_map=pl.read_parquet(directory / ITEM_MAP),
            user_map=pl.read_parquet(directory / USER_MAP),
            items=pl.read_parquet(directory / ITEMS),
            histories=pl.read_parquet(directory / HISTORIES),
            metrics=json.loads((directory / METRICS).read_text(encoding="utf-8")),
            extra=extra,
            bundle=bundle,
        )
    except (KeyError, OSError, ValueError, yaml.YAMLError, pl.exceptions.PolarsError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ModelLoadError(f"{directory}: unreadable model file ({type(exc).__name__}: {first[:300]})") from None
    if not isinstance(saved.config, dict) or not isinstance(saved.config.get("model"), dict):
        raise ModelLoadError(f"{directory / CONFIG}: not a run config (no model section)")
    if saved.item_map.height != saved.n_items:
        raise ModelLoadError(f"{directory}: manifest says n_items={saved.n_items} but {ITEM_MAP} has "
                             f"{saved.item_map.height} rows")
    return saved


def load_weights(model: torch.nn.Module, saved: SavedModel, where: str | Path) -> None:
    """Load `saved.state_dict` into `model` (built from `saved.config` and `saved.n_items`), after checking
    every tensor against the shape the config gives it: a mismatch names the tensor, both shapes and the
    config's sizes, where torch's own message would only say that loading failed."""
    expected = model.state_dict()
    sizes = ", ".join([f"n_items={saved.n_items}"] + [f"model.{k}={v}" for k, v in saved.config["model"].items()
                                                      if k in ("hidden", "max_len", "n_layers", "n_heads")])
    for key, tensor in expected.items():
        if key not in saved.state_dict:
            raise ModelLoadError(f"{where}: the weights lack tensor {key}, which the {saved.model_name} config "
                                 f"({sizes}) needs")
        got = list(saved.state_dict[key].shape)
        if got != list(tensor.shape):
            raise ModelLoadError(f"{where}: tensor {key} has shape {got}, but the {saved.model_name} config "
                                 f"({sizes}) gives it {list(tensor.shape)}")
    unexpected = sorted(set(saved.state_dict) - set(expected))
    if unexpected:
        raise ModelLoadError(f"{where}: the weights hold tensor {unexpected[0]}, which a {saved.model_name} "
                             f"model ({sizes}) does not have")
    model.load_state_dict(saved.state_dict)


def build_saved_model(saved: SavedModel, where: str | Path, with_prior: bool = True) -> tuple[Any, SequenceModel]:
    """(run config, model with the saved weights) of a saved model. A model that bundles files (a text
    model's tokenizer) is pointed at the bundled copies, so loading needs nothing outside the directory.
    A model given a catalogue prior (`recsys index set-prior`) comes wrapped in `WithItemPrior`, unless
    `with_prior` is False (to change the model itself, as add-items does)."""
    from dataclasses import replace

    from recsys.models import build_model, get_model_spec
    from recsys.run_config import run_config_from_dict

    cfg = run_config_from_dict(saved.config, where=f"{where}: config")
    model_cls, _ = get_model_spec(cfg.model_name)
    if saved.bundle:
        cfg = replace(cfg, model=model_cls.from_bundle(cfg.model, saved.bundle))
    model = build_model(cfg.model_name, cfg.model, saved.n_items)
    load_weights(model, saved, where)
    prior = item_prior_of(saved, where)
    if with_prior and prior is not None:
        from recsys.models.prior import WithItemPrior

        model = WithItemPrior(model, prior["counts"], prior["weight"])
    return cfg, model


def item_prior_of(saved: SavedModel, where: str | Path) -> dict[str, Any] | None:
    """The catalogue prior a model directory holds (manifest field `item_prior`: `counts`, one per item_idx
    1..n_items, and `weight`), checked; None if it has none."""
    prior = saved.extra.get("item_prior")
    if prior is None:
        return None
    counts = prior.get("counts") if isinstance(prior, dict) else None
    weight = prior.get("weight") if isinstance(prior, dict) else None
    if not isinstance(counts, list) or len(counts) != saved.n_items:
        got = len(counts) if isinstance(counts, list) else type(counts).__name__
        raise ModelLoadError(f"{where}: manifest item_prior.counts must list one count per item "
                             f"({saved.n_items}), got {got}")
    if not all(isinstance(c, int) and c >= 0 for c in counts):
        raise ModelLoadError(f"{where}: manifest item_prior.counts must be non-negative integers")
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 <= weight < float("inf"):
        raise ModelLoadError(f"{where}: manifest item_prior.weight must be a non-negative number, got {weight!r}")
    return {**prior, "weight": float(weight)}


def _copy_bundle(bundle: dict[str, Path], into: Path) -> list[str]:
    """Copy a model's bundled files into the folder being written; their names, sorted."""
    for name, source in bundle.items():
        target = into / name
        if not target.resolve().is_relative_to(into.resolve()):
            raise ModelLoadError(f"bundled file {name!r} would be written outside the model directory")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return sorted(bundle)


def _check_bundle(directory: Path, manifest: dict[str, Any], verify: bool) -> dict[str, Path]:
    """The bundled files the manifest lists, each present, inside the directory and matching its checksum."""
    bundle: dict[str, Path] = {}
    for name in manifest.get("bundle", []):
        path = directory / str(name)
        if not path.resolve().is_relative_to(directory.resolve()) or not path.is_file():
            raise ModelLoadError(f"{directory}: missing bundled file {name}")
        if verify and manifest.get("files", {}).get(name) != sha256_file(path):
            raise ModelLoadError(f"{path}: checksum does not match the manifest (file changed or corrupt)")
        bundle[str(name)] = path
    return bundle
