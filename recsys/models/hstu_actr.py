"""HSTU with ACT-R memory: HSTU's inner product plus a learnt ACT-R term on the items of the history.

PISA's combination (Tran et al., "Transformers Meet ACT-R: Repeat-Aware and Sequential Listening Session
Recommendation", RecSys 2024) over HSTU (Zhai et al., ICML 2024): HSTU already reads how long ago each item
was used (its time-gap bias), but only to mix states; the memory term says directly how available each
history item is at the query time. The formula, what is learnt and how it is served are in
recsys.models.actr_memory; the sequence model is recsys.models.hstu, unchanged.
"""

from __future__ import annotations

from recsys.models.actr_memory import ACTRMemory, ACTRMemoryConfig, WithACTRMemory
from recsys.models.hstu import HSTU, HSTUConfig
from recsys.models.losses import SoftmaxLossConfig


class HSTUACTRConfig(HSTUConfig, ACTRMemoryConfig):
    """HSTU's hyperparameters plus the ACT-R memory term's."""

    loss: SoftmaxLossConfig = SoftmaxLossConfig()
    """Training loss: a softmax ('ce' over the catalogue, or 'sampled_ce'), which the memory logits join."""


class HSTUACTR(WithACTRMemory, HSTU):
    """HSTU plus a learnt ACT-R memory term on history items (contract: recsys.models.base)."""

    config: HSTUACTRConfig  # type: ignore[assignment]

    def __init__(self, n_items: int, config: HSTUACTRConfig) -> None:
        super().__init__(n_items, config)
        self.memory = ACTRMemory(config.hidden, config)
