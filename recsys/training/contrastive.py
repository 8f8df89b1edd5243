"""Contrastive self-supervision beside the next-item loss, for any sequence model (`trainer.contrastive`).

CL4SRec (Xu Xie et al., "Contrastive Learning for Sequential Recommendation", ICDE 2022): each training
history gets two views, each made by one augmentation drawn from crop / mask / reorder
(`recsys.data.augment`); the model encodes both to user vectors (`user_vector`, the contract's word for a
history's representation), and InfoNCE over the batch (the 2N - 2 other views are the negatives, SimCLR's
NT-Xent) pulls each pair together. Loss: next-item loss + lambda * InfoNCE.

MCLRec (Xiuyuan Qin et al., "Meta-optimized Contrastive Learning for Sequential Recommendation", SIGIR 2023,
arXiv:2304.07763): two learnable augmenters (small MLPs, `Augmenter`) map the views' vectors h1, h2 to
g1, g2, a second pair of views made by the model's features rather than the data. Their contrastive terms
are InfoNCE(h1, g2) + InfoNCE(h2, g1) + InfoNCE(g1, g2), plus a margin regulariser on the same pairs
(`margin_regularizer`). Training alternates, as the authors' code does for each batch: (1) the model
steps on next-item + lambda * InfoNCE(h1, h2) + beta * (terms + regulariser) with the augmenters frozen;
(2) the augmenters step on the terms + regulariser, with the views re-encoded by the updated model and the
model fixed; (3) the model steps again as in (1). The meta step is first-order (no gradient through the
model's update), as in that code. `recsys.training.module` runs these steps; this file computes the losses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recsys.config import ContrastiveConfig
from recsys.data.augment import augment
from recsys.models.base import SequenceModel


def pair_logits(a: Tensor, b: Tensor, temperature: float, similarity: str = "dot") -> Tensor:
    """Similarities of the 2N views `cat(a, b)` with each other, divided by `temperature`: [2N, 2N], with
    each view's similarity to itself at -inf (it is neither its positive nor a negative)."""
    z = torch.cat([a, b])  # [2N, dim]
    if similarity == "cosine":
        z = F.normalize(z, dim=1)
    logits = z @ z.T / temperature  # [2N, 2N]
    itself = torch.eye(z.shape[0], dtype=torch.bool, device=z.device)
    return logits.masked_fill(itself, float("-inf"))


def _positives(n: int, device: torch.device) -> Tensor:
    """Row i's positive among the 2N views: i + N for the first view of a pair, i - N for the second."""
    return (torch.arange(2 * n, device=device) + n) % (2 * n)  # [2N]


def info_nce(a: Tensor, b: Tensor, temperature: float, similarity: str = "dot") -> Tensor:
    """InfoNCE between paired views a[i], b[i] ([N, dim] each), in-batch negatives: the mean over the 2N
    views of -log softmax of its positive's similarity among the other 2N - 1 views."""
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"info_nce needs two [N, dim] tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    logits = pair_logits(a, b, temperature, similarity)
    return F.cross_entropy(logits, _positives(a.shape[0], a.device))


def margin_regularizer(a: Tensor, b: Tensor, temperature: float, similarity: str = "dot") -> Tensor:
    """MCLRec's regulariser of a pair of views: with p each view's positive similarity, m its hardest
    negative's and s its negatives', mean(relu(p - m)) + mean(max(p, m) - s). It grows as the positive runs
    away from the negatives, so augmenters that minimise it with InfoNCE cannot make the pairs trivially
    easy to tell apart (the authors' code weights it 0.1 and applies it in every step)."""
    logits = pair_logits(a, b, temperature, similarity)  # [2N, 2N]
    n2 = logits.shape[0]
    positive_mask = F.one_hot(_positives(a.shape[0], a.device), n2).bool()  # [2N, 2N]
    negative_mask = ~positive_mask & ~torch.eye(n2, dtype=torch.bool, device=a.device)
    if not negative_mask.any():
        return logits.new_zeros(())  # one pair: no negatives to keep a margin to
    positive = logits[positive_mask]  # [2N]
    negatives = logits[negative_mask].view(n2, n2 - 2)  # [2N, 2N - 2]
    hardest = negatives.max(dim=1).values  # [2N]
    return F.relu(positive - hardest).mean() + (torch.maximum(positive, hardest).unsqueeze(1) - negatives).mean()


class Augmenter(nn.Module):
    """An MCLRec augmenter: dim -> a -> b -> dim, GELU between the layers, the output scaled to unit length."""

    def __init__(self, dim: int, hidden: tuple[int, int]) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden[0]), nn.GELU(), nn.Linear(hidden[0], hidden[1]), nn.GELU(),
                                 nn.Linear(hidden[1], dim))

    def forward(self, h: Tensor) -> Tensor:
        return F.normalize(self.net(h), dim=-1)  # [N, dim]


class ContrastiveViews:
    """The two augmented views of a batch's histories and their vectors under a model, per the config."""

    def __init__(self, config: ContrastiveConfig, mask_token: int) -> None:
        self.config = config
        self.mask_token = mask_token  # the model's [MASK] id, or 0 (padding) for models without one

    def draw(self, history: Tensor, times: Tensor | None,
             generator: torch.Generator) -> list[tuple[Tensor, Tensor | None]]:
        """Two independent views of each history ([batch, seq_len], left-padded)."""
        cfg = self.config
        return [augment(history, cfg.augmentations, crop_ratio=cfg.crop_ratio, mask_ratio=cfg.mask_ratio,
                        reorder_ratio=cfg.reorder_ratio, mask_token=self.mask_token, generator=generator,
                        times=times) for _ in range(2)]

    @staticmethod
    def encode(model: SequenceModel, views: list[tuple[Tensor, Tensor | None]]) -> tuple[Tensor, Tensor]:
        """Each view's user vector: two [batch, dim] tensors."""
        first, second = (model.user_vector(items, times) for items, times in views)
        return first, second

    def cl4srec_loss(self, h1: Tensor, h2: Tensor) -> Tensor:
        return info_nce(h1, h2, self.config.temperature, self.config.similarity)

    def mclrec_terms(self, h1: Tensor, h2: Tensor, augmenters: nn.ModuleList) -> Tensor:
        """The augmenters' contrastive terms plus the weighted margin regulariser (MCLRec's extra losses)."""
        cfg = self.config
        g1, g2 = augmenters[0](h1), augmenters[1](h2)
        pairs = ((h1, g2), (h2, g1), (g1, g2))
        terms = sum(info_nce(a, b, cfg.temperature, cfg.similarity) for a, b in pairs)
        if cfg.regularizer_weight:
            terms = terms + cfg.regularizer_weight * sum(
                margin_regularizer(a, b, cfg.temperature, cfg.similarity) for a, b in pairs)
        return terms  # type: ignore[return-value]
