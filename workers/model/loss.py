"""Normalized focal loss (RITM): focal weights (1 - p_t)^gamma rescaled per sample so they sum to the pixel
count, which keeps the loss scale steady as the prediction improves and focuses it on the remaining errors."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def normalized_focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Mean over the batch; logits and target are B x 1 x H x W, target in {0, 1}."""
    prob = torch.sigmoid(logits)
    p_t = torch.where(target > 0.5, prob, 1.0 - prob)
    weight = (1.0 - p_t).pow(gamma)
    with torch.no_grad():
        n_pixels = weight[0].numel()
        scale = n_pixels / weight.sum(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (scale * weight * bce).sum(dim=(1, 2, 3)).div(n_pixels).mean()
