"""An encoder compiled with `torch.compile`, for `Recommender.load(..., compile=True)` and `--compile`.

On a CPU, eager PyTorch runs a transformer block as a string of separate kernels, each reading and writing
whole [batch, seq_len, hidden] tensors; the linear layers even write their bias out before the matrix product
adds to it. Inductor fuses the element-wise work (layer norms, residual adds, activations) and, with the
weights frozen as constants, packs them once for oneDNN's matrix products with the bias fused in. For the ml-1m
SASRec encoder that is 1.3-1.8x faster over all users, depending on the run (`benchmarks/retrieval.py`), for
a one-off compile of 5-25 s at load. It needs a C++ compiler; without one, or if compiling fails for any other reason, the
Recommender warns and encodes eagerly.

Compiled graphs serve every batch: dynamic shapes, with batches of one row or one column padded to two
(torch specialises sizes 0 and 1, which would compile again on the first single-user request), and BERT4Rec's
full window as a second graph; both are compiled at load. Padding is safe because every model's user vector is
invariant to left padding (each model's tests check it).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Encoder = Callable[[Tensor], Tensor]


class CompileFallbackWarning(UserWarning):
    """compile=True was asked for, but torch.compile failed: the Recommender encodes without it."""


def compiled_user_vector(model: nn.Module, max_len: int) -> Encoder | None:
    """`model.user_vector` compiled (weights frozen: the model must not change afterwards), compiled now by
    warm-up calls; None, with a CompileFallbackWarning, if compiling fails (encode eagerly then). `max_len` is
    the longest history the model reads."""
    import torch._inductor.config as inductor_config

    compiled = torch.compile(model.user_vector, dynamic=True)

    def encode(items: Tensor) -> Tensor:
        rows = items.shape[0]
        # Freezing is read when a graph compiles; patched per call so the process's other compiles keep
        # their settings. Outside inference mode (autograd on) inductor would not freeze.
        with inductor_config.patch(freezing=True), torch.inference_mode():
            # F.pad always returns a fresh contiguous inference tensor, whatever the caller passed: a tensor made
            # outside inference mode, or a stride-0 view, would fail the compiled graph's guards (a recompile).
            items = F.pad(items, (max(0, 2 - items.shape[1]), 0))  # left padding with item 0, to 2 columns
            if rows < 2:
                items = items.repeat(2, 1)
            return compiled(items)[:rows]

    try:
        # Compile now, not on the first request: a short batch and a full window (BERT4Rec drops the oldest
        # column of a full window, another graph); no size equal to another, or torch would assume it always is.
        # And under each thread count a request may run with: the Recommender encodes small batches on one
        # thread, and a graph compiled under another count fails dynamo's guard (a recompile per request).
        before = torch.get_num_threads()
        try:
            for threads in sorted({before, 1}, reverse=True):
                torch.set_num_threads(threads)
                for length in sorted({3, max_len}):
                    encode(torch.ones(2, length, dtype=torch.long))
        finally:
            torch.set_num_threads(before)
    except Exception as exc:  # noqa: BLE001 - any compiler failure: the eager encoder is always correct
        lines = str(exc).strip().splitlines()
        reason = lines[0][:300] if lines else type(exc).__name__
        warnings.warn(f"compile=True: torch.compile failed ({type(exc).__name__}: {reason}); encoding without it",
                      CompileFallbackWarning, stacklevel=3)
        torch._dynamo.reset()
        return None
    return encode
