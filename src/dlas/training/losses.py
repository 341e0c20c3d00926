"""Training losses over (partially) labelled slices: class-weighted cross-entropy and Dice + CE.

Partial labels: a case that lacks a structure gives no information about that structure's
voxels, so they must not be counted as background (that would teach the network to omit the
structure). The *marginal* loss (Shi et al., "Marginal loss and exclusion loss for partially
supervised multi-organ segmentation", Med Image Anal 2021) merges, per sample, the probabilities
of the classes the case does not delineate into the background's::

    q_bg = p_bg + sum_{c unknown} p_c,    q_c = p_c (c delineated),    q_c = 0 (c unknown)

and applies the usual losses to ``q``. With every class delineated ``q = p`` and the losses are
the ordinary ones. Computed in log space (``logsumexp``) for stability.

* Cross-entropy: ``sum_p w[y_p] * -log q[y_p]`` and its normaliser ``sum_p w[y_p]`` are returned
  separately, so that a distributed run can normalise by the global batch (the seed study's
  class-weighted CE when ``w`` are its weights).
* Dice (nnU-Net's "batch Dice"): per structure over the whole batch, counting only the samples
  that delineate it, ``(2 sum q g + s) / (sum q + sum g + s)``; the loss is one minus the mean
  over the structures present in the batch (structures absent from every slice of the batch add
  no term, so a batch of empty slices is judged by the cross-entropy alone).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["LossTerms", "marginal_log_probs", "segmentation_loss", "soft_dice_counts"]

#: Smoothing of the Dice ratio (nnU-Net's value).
SMOOTH = 1e-5


def marginal_log_probs(logits: torch.Tensor, labeled: torch.Tensor) -> torch.Tensor:
    """Log of the marginal class probabilities ``q`` (B, C, H, W) of logits (B, C, H, W) when
    sample ``b`` delineates the classes ``labeled[b]`` (B, C) bool; unknown classes get -inf."""
    import torch

    logp = torch.log_softmax(logits, dim=1)
    unknown = ~labeled.to(dtype=torch.bool)
    unknown[:, 0] = False
    if not bool(unknown.any()):  # decided where ``labeled`` lives (the host, in training)
        return logp
    unknown = unknown.to(logits.device)
    into_background = unknown.clone()
    into_background[:, 0] = True
    merged = torch.logsumexp(
        logp.masked_fill(~into_background[:, :, None, None], float("-inf")), dim=1
    )
    rest = logp[:, 1:].masked_fill(unknown[:, 1:, None, None], float("-inf"))
    return torch.cat([merged[:, None], rest], dim=1)


def soft_dice_counts(
    log_q: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per sample and class (B, C): soft intersection ``sum q g``, ``sum q`` and ``sum g``."""
    import torch
    import torch.nn.functional as tnf

    q = torch.exp(log_q)
    g = tnf.one_hot(labels, num_classes=log_q.shape[1]).permute(0, 3, 1, 2).to(q.dtype)
    dims = (2, 3)
    return (q * g).sum(dims), q.sum(dims), g.sum(dims)


@dataclass
class LossTerms:
    """The parts of a batch's loss: ``ce_sum / ce_norm`` is the cross-entropy, ``dice`` the
    Dice loss (0 without a Dice term)."""

    ce_sum: torch.Tensor
    ce_norm: torch.Tensor
    dice: torch.Tensor


def segmentation_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    labeled: torch.Tensor,
    *,
    weights: torch.Tensor,
    dice: bool,
) -> LossTerms:
    """The loss terms of a batch (see the module docstring).

    Parameters
    ----------
    logits
        (B, C, H, W) network output (float32).
    labels
        (B, H, W) int64 classes; a class a sample does not delineate never appears.
    labeled
        (B, C) bool, the classes each sample delineates (column 0, background, is ignored).
    weights
        (C,) cross-entropy class weights.
    dice
        Add the batch Dice loss.
    """
    import torch
    import torch.nn.functional as tnf

    log_q = marginal_log_probs(logits, labeled)
    ce_sum = tnf.nll_loss(log_q, labels, weight=weights, reduction="sum")
    ce_norm = weights[labels].sum()
    dice_loss = torch.zeros((), dtype=logits.dtype, device=logits.device)
    if dice:
        inter, pred, ref = soft_dice_counts(log_q, labels)
        known = labeled.to(device=logits.device, dtype=logits.dtype)[:, 1:]
        inter = (inter[:, 1:] * known).sum(0)
        pred = (pred[:, 1:] * known).sum(0)
        ref = (ref[:, 1:] * known).sum(0)
        present = (ref > 0).to(logits.dtype)
        ratio = (2 * inter + SMOOTH) / (pred + ref + SMOOTH)
        count = present.sum()
        # Without a host synchronisation: no structure in the batch gives 0.
        dice_loss = (count - (ratio * present).sum()) / count.clamp_min(1.0)
    return LossTerms(ce_sum, ce_norm, dice_loss)
