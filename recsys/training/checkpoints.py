"""Lightning checkpoints that survive a kill or a full disk, and that never execute code when read.

Lightning writes a checkpoint to a temporary file in the system's temp folder and then moves it into place.
Across filesystems (a tmpfs /tmp, a run folder on another disk) that move is a copy, so a kill or a full disk
in the middle of it leaves a truncated `last.ckpt` where a good one was. `AtomicCheckpointIO` writes beside
the target, fsyncs and renames over it (`recsys.durable.replacing`), so the previous checkpoint stays whole
until the new one is complete.

Reading is always `weights_only=True` (tensors and plain data, never arbitrary pickled objects), and a file
that cannot be read is a one-line ModelLoadError naming it, not a torch traceback.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any, Callable

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from recsys.durable import replacing
from recsys.errors import ModelLoadError


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO with an atomic, durable save and a safe, checked load."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        Path(path).parent.mkdir(parents=True, exist_ok=True)  # Lightning leaves checkpoints/ to us
        with replacing(path) as tmp, open(tmp, "wb") as handle:
            torch.save(checkpoint, handle)

    def load_checkpoint(self, path: Any, map_location: Callable[..., Any] | None = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        return load_checkpoint_file(Path(path))


def load_checkpoint_file(path: Path) -> dict[str, Any]:
    """A Lightning checkpoint read on the CPU with `weights_only=True`; ModelLoadError when it is missing,
    truncated, not a checkpoint, or holds objects that only full unpickling (code execution) could build."""
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = next((line.strip() for line in str(exc).splitlines() if "Unsupported" in line), "")
        raise ModelLoadError(f"{path}: refused: it holds objects other than tensors and plain data, which "
                             f"loading would have to execute ({detail[:200] or 'weights_only load failed'})") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"{path}: truncated or not a checkpoint ({first[:200]})") from None
    if not isinstance(state, dict) or "state_dict" not in state:
        raise ModelLoadError(f"{path}: not a Lightning checkpoint (no state_dict)")
    return state
