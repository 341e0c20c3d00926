"""Losses over partially labelled slices, checked against direct probability arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as tnf

from dlas.training.losses import marginal_log_probs, segmentation_loss


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn((3, 4, 6, 5), generator=gen, dtype=torch.float64) * 2
    labels = torch.randint(0, 4, (3, 6, 5), generator=gen)
    return logits, labels


def test_fully_labelled_loss_is_the_weighted_cross_entropy() -> None:
    logits, labels = _batch()
    weights = torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=torch.float64)
    labeled = torch.ones((3, 4), dtype=torch.bool)
    terms = segmentation_loss(logits, labels, labeled, weights=weights, dice=False)
    expected = tnf.cross_entropy(logits, labels, weight=weights, reduction="mean")
    assert float(terms.ce_sum / terms.ce_norm) == pytest.approx(float(expected), rel=1e-12)
    assert float(terms.dice) == 0.0


def test_marginal_probabilities_add_unknown_classes_to_the_background() -> None:
    logits, _ = _batch(1)
    labeled = torch.tensor(
        [[True, True, True, True], [True, False, True, True], [True, False, True, False]]
    )
    q = marginal_log_probs(logits, labeled).exp().numpy()
    p = torch.softmax(logits, dim=1).numpy()
    for b in range(3):
        unknown = [c for c in range(1, 4) if not bool(labeled[b, c])]
        assert np.allclose(q[b, 0], p[b, 0] + p[b, unknown].sum(axis=0))
        for c in range(1, 4):
            assert np.allclose(q[b, c], 0.0 if c in unknown else p[b, c])
        assert np.allclose(q[b].sum(axis=0), 1.0)


def test_unknown_structure_is_not_taught_as_background() -> None:
    # A pixel labelled background in a case that does not delineate class 1: predicting class 1
    # there costs nothing extra with the marginal loss, but a lot with the plain one.
    logits = torch.tensor([[0.0, 6.0, 0.0]])[:, :, None, None].double().requires_grad_(True)
    labels = torch.zeros((1, 1, 1), dtype=torch.int64)
    weights = torch.ones(3, dtype=torch.float64)
    unknown = torch.tensor([[True, False, True]])
    marginal = segmentation_loss(logits, labels, unknown, weights=weights, dice=False)
    plain = segmentation_loss(
        logits, labels, torch.ones((1, 3), dtype=torch.bool), weights=weights, dice=False
    )
    assert float(marginal.ce_sum.detach()) < 0.01 < 5.0 < float(plain.ce_sum.detach())
    marginal.ce_sum.backward()
    assert logits.grad is not None and float(logits.grad[0, 1]) <= 0.0  # never pushed down


def test_batch_dice_counts_only_samples_that_delineate_the_structure() -> None:
    logits, labels = _batch(2)
    labeled = torch.tensor(
        [[True, True, True, True], [True, False, True, True], [True, True, True, True]]
    )
    terms = segmentation_loss(
        logits, labels, labeled, weights=torch.ones(4, dtype=torch.float64), dice=True
    )
    q = marginal_log_probs(logits, labeled).exp().numpy()
    g = np.stack([(labels.numpy() == c) for c in range(4)], axis=1).astype(float)
    ratios = []
    for c in range(1, 4):
        rows = [b for b in range(3) if bool(labeled[b, c])]
        inter = (q[rows, c] * g[rows, c]).sum()
        total = q[rows, c].sum() + g[rows, c].sum()
        if g[rows, c].sum() > 0:
            ratios.append((2 * inter + 1e-5) / (total + 1e-5))
    assert float(terms.dice) == pytest.approx(1.0 - np.mean(ratios), rel=1e-9)


def test_dice_ignores_structures_absent_from_the_whole_batch() -> None:
    logits = torch.zeros((2, 3, 4, 4), dtype=torch.float64)
    labels = torch.zeros((2, 4, 4), dtype=torch.int64)
    labels[:, :2, :2] = 1  # class 2 nowhere
    terms = segmentation_loss(
        logits,
        labels,
        torch.ones((2, 3), dtype=torch.bool),
        weights=torch.ones(3, dtype=torch.float64),
        dice=True,
    )
    q = 1 / 3
    expected = 1 - (2 * q * 8 + 1e-5) / (q * 32 + 8 + 1e-5)
    assert float(terms.dice) == pytest.approx(expected)
    empty = segmentation_loss(
        logits,
        torch.zeros((2, 4, 4), dtype=torch.int64),
        torch.ones((2, 3), dtype=torch.bool),
        weights=torch.ones(3, dtype=torch.float64),
        dice=True,
    )
    assert float(empty.dice) == 0.0
