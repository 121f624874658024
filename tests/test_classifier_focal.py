import math

import numpy as np
import pytest
import torch
import torch.nn.functional as functional

from classifier.errors import InvalidParameterError
from classifier.focal import sigmoid_focal_loss, softmax_focal_loss
from classifier.weighting import make_loss, resolve_alpha


def test_sigmoid_focal_matches_hand_computed_values():
    # Row 1: p = 0.5, positive, alpha 0.25  -> 0.25 * 0.5**2 * -ln(0.5)
    # Row 2: p = 0.75, negative (p_t = 0.25), weight 1 - 0.25 -> 0.75 * 0.75**2 * -ln(0.25)
    logits = torch.tensor([0.0, math.log(3.0)])
    targets = torch.tensor([1.0, 0.0])
    expected = (0.25 * 0.25 * math.log(2) + 0.75 * 0.5625 * math.log(4)) / 2
    loss = sigmoid_focal_loss(logits, targets, gamma=2.0, alpha=0.25)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.3140824, rel=1e-6)


def test_softmax_focal_matches_hand_computed_values():
    # softmax([0, ln 3]) = [0.25, 0.75]; target 0 -> p_t = 0.25; alpha[0] = 2
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])
    targets = torch.tensor([0, 1])
    alpha = torch.tensor([2.0, 1.0])
    first = 2.0 * 0.75**2 * math.log(4)
    second = 1.0 * 0.25**2 * -math.log(0.75)
    loss = softmax_focal_loss(logits, targets, gamma=2.0, alpha=alpha)
    assert loss.item() == pytest.approx((first + second) / 2, rel=1e-6)


def test_gamma_reduces_the_loss_of_easy_examples_most():
    logits = torch.tensor([4.0, -1.0])  # one easy, one misclassified positive
    targets = torch.ones(2)
    ratio_easy = sigmoid_focal_loss(logits[:1], targets[:1], gamma=2) / sigmoid_focal_loss(
        logits[:1], targets[:1], gamma=0
    )
    ratio_hard = sigmoid_focal_loss(logits[1:], targets[1:], gamma=2) / sigmoid_focal_loss(
        logits[1:], targets[1:], gamma=0
    )
    assert ratio_easy < 0.01 < 0.5 < ratio_hard


def test_gamma_zero_is_binary_cross_entropy_weighted_by_alpha():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(50, generator=generator) * 3
    targets = (torch.rand(50, generator=generator) > 0.6).float()
    plain = functional.binary_cross_entropy_with_logits(logits, targets)
    assert sigmoid_focal_loss(logits, targets, gamma=0.0).item() == pytest.approx(
        plain.item(), rel=1e-5
    )
    alpha = 0.8
    weights = targets * alpha + (1 - targets) * (1 - alpha)
    weighted = functional.binary_cross_entropy_with_logits(logits, targets, weight=weights)
    focal = sigmoid_focal_loss(logits, targets, gamma=0.0, alpha=alpha)
    assert focal.item() == pytest.approx(weighted.item(), rel=1e-5)


def test_gamma_zero_is_multiclass_cross_entropy_with_class_weights():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(60, 4, generator=generator) * 2
    targets = torch.randint(0, 4, (60,), generator=generator)
    alpha = torch.tensor([0.5, 1.0, 2.0, 4.0])
    plain = functional.cross_entropy(logits, targets)
    assert softmax_focal_loss(logits, targets, gamma=0.0).item() == pytest.approx(
        plain.item(), rel=1e-5
    )
    # Our mean divides by n (not by the sum of weights as torch's weighted mean does).
    weighted_sum = functional.cross_entropy(logits, targets, weight=alpha, reduction="sum")
    focal = softmax_focal_loss(logits, targets, gamma=0.0, alpha=alpha)
    assert focal.item() == pytest.approx(weighted_sum.item() / 60, rel=1e-5)


def test_gamma_zero_is_multilabel_cross_entropy_with_per_label_alpha():
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(40, 3, generator=generator) * 2
    targets = (torch.rand(40, 3, generator=generator) > 0.7).float()
    alpha = torch.tensor([0.9, 0.5, 0.2])
    weights = targets * alpha + (1 - targets) * (1 - alpha)
    expected = functional.binary_cross_entropy_with_logits(logits, targets, weight=weights)
    focal = sigmoid_focal_loss(logits, targets, gamma=0.0, alpha=alpha)
    assert focal.item() == pytest.approx(expected.item(), rel=1e-5)
    loss = make_loss("multilabel", 0.0, alpha.numpy())
    assert loss(logits, targets, None).item() == pytest.approx(expected.item(), rel=1e-5)


def test_alpha_resolution_and_errors():
    targets = np.array([0, 0, 0, 1, 2, 2])
    balanced = resolve_alpha("balanced", targets, 3, "multiclass")
    assert balanced.tolist() == pytest.approx([6 / 9, 6 / 3, 6 / 6])
    with pytest.raises(InvalidParameterError, match="one per class"):
        resolve_alpha(0.25, targets, 3, "multiclass")
    with pytest.raises(InvalidParameterError, match=r"\[0, 1\]"):
        resolve_alpha(1.5, np.array([0, 1]), 2, "binary")
    with pytest.raises(InvalidParameterError, match="gamma"):
        make_loss("binary", -1.0, None)
