"""InfoNCE over in-batch passages (the contrastive loss of DPR / mE5 / the HBT paper).

For queries q_1..q_B and the batch's passages p_1..p_P (every item's positive and every item's
hard negatives, i.e. positives of the other queries act as negatives too), with unit-length
embeddings and temperature τ:

    s_ij = cos(q_i, p_j) / τ
    L    = (1/B) Σ_i  −log( exp(s_{i,t(i)}) / Σ_j exp(s_ij) )

where t(i) is the row of query i's own positive. This is the cross-entropy of the score row
against the positive's index.

References: van den Oord, Li & Vinyals 2018, "Representation Learning with Contrastive
Predictive Coding" (arXiv 1807.03748); Karpukhin et al. 2020, "Dense Passage Retrieval" (in-batch
negatives); Elmahdy, Lin & Ahmad 2024 (arXiv 2408.10536), τ = 0.05.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce_loss(queries: torch.Tensor, passages: torch.Tensor, targets: torch.Tensor,
                  temperature: float) -> torch.Tensor:
    """Mean InfoNCE loss; ``queries`` (B, d) and ``passages`` (P, d) are L2-normalised,
    ``targets`` (B,) holds the row of each query's positive among ``passages``.

    Computed in float32 even under bf16 autocast: bf16 scores scaled by 1/τ = 20 would carry
    errors of ~0.1 in the logits."""
    with torch.autocast(queries.device.type, enabled=False):
        scores = queries.float() @ passages.float().T / temperature
        return F.cross_entropy(scores, targets)
