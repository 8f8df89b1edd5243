"""SASRec with ACT-R memory: SASRec's inner product plus a learnt ACT-R term on the items of the history.

PISA's combination (Tran et al., "Transformers Meet ACT-R: Repeat-Aware and Sequential Listening Session
Recommendation", RecSys 2024) over SASRec (Kang & McAuley 2018): the formula, what is learnt and how it is
served are in recsys.models.actr_memory; the sequence model is recsys.models.sasrec, unchanged.
"""

from __future__ import annotations

from recsys.models.actr_memory import ACTRMemory, ACTRMemoryConfig, WithACTRMemory
from recsys.models.losses import SoftmaxLossConfig
from recsys.models.sasrec import SASRec, SASRecConfig


class SASRecACTRConfig(SASRecConfig, ACTRMemoryConfig):
    """SASRec's hyperparameters plus the ACT-R memory term's."""

    loss: SoftmaxLossConfig = SoftmaxLossConfig()
    """Training loss: a softmax ('ce' over the catalogue, or 'sampled_ce'), which the memory logits join."""


class SASRecACTR(WithACTRMemory, SASRec):
    """SASRec plus a learnt ACT-R memory term on history items (contract: recsys.models.base)."""

    config: SASRecACTRConfig  # type: ignore[assignment]
    uses_timestamps = True  # the memory's ages; SASRec's blocks still read items and positions only

    def __init__(self, n_items: int, config: SASRecACTRConfig) -> None:
        super().__init__(n_items, config)
        self.memory = ACTRMemory(config.hidden, config)
