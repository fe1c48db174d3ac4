"""Tests of the partial-label selective loss, its builder from train.py's flags, the paper's import
surface, and ASL.

Expected values are written out by hand with math.log on the probabilities the logits were built
from; gradients are compared with autograd of an independently written plain formula.
"""

from __future__ import annotations

import argparse
import inspect
import math

import numpy as np
import pytest
import torch
from torch import nn

from src.args import build_train_parser
from src.loss_functions import CSL_MODES, PartialSelectiveLoss, build_criterion
from src.loss_functions.losses import AsymmetricLoss, AsymmetricLossOptimized

# Probabilities and labels of the hand-computed cases (2 samples x 4 classes).
PROBS = [[0.8, 0.25, 0.5, 0.3], [0.9, 0.6, 0.1, 0.2]]
TARGETS = [[1, 0, -1, -1], [-1, 1, 0, 0]]
NAMES = ["a", "b", "c", "d"]
NO_FOCUS = dict(gamma_pos=0, gamma_neg=0, gamma_unann=0)
LOSS_FLAGS = ("partial_loss_mode", "prior_threshold", "likelihood_topk", "clip", "gamma_pos", "gamma_neg",
              "gamma_unann", "alpha_pos", "alpha_neg", "alpha_unann")


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def hand_inputs():
    logits = torch.tensor([[logit(p) for p in row] for row in PROBS], dtype=torch.float32)
    return logits, torch.tensor(TARGETS, dtype=torch.float32)


def loss_value(loss_fn=None, **settings) -> float:
    logits, targets = hand_inputs()
    return (loss_fn or PartialSelectiveLoss(**settings))(logits, targets).item()


def write_prior(path, names, values):
    path.write_text("Classes,avg_pred\n" + "".join(f"{n},{v!r}\n" for n, v in zip(names, values)))
    return path


def train_args(*argv: str) -> argparse.Namespace:
    """train.py's Namespace for ``argv`` (the loss flags and everything else at their defaults)."""
    return build_train_parser().parse_args(["--model-path", "none", *argv])


# Default focusing (gamma_pos 0, gamma_neg 1, gamma_unann 2): per-entry terms of the hand case.
L = math.log
POS_00 = L(0.8)                    # positive, p 0.8, weight (1-p)^0
NEG_01 = 0.25 * L(0.75)            # negative, q 0.75, weight (1-q)^1
UNANN_02 = 0.5**2 * L(0.5)         # un-annotated, q 0.5, weight (1-q)^2
UNANN_03 = 0.3**2 * L(0.7)
UNANN_10 = 0.9**2 * L(0.1)
POS_11 = L(0.6)
NEG_12 = 0.1 * L(0.9)
NEG_13 = 0.2 * L(0.8)
ANNOTATED = POS_00 + NEG_01 + POS_11 + NEG_12 + NEG_13


def test_defaults_match_the_paper_train_script():
    loss = PartialSelectiveLoss()
    assert (loss.clip, loss.gamma_pos, loss.gamma_neg, loss.gamma_unann) == (0, 0, 1, 2)
    assert (loss.alpha_pos, loss.alpha_neg, loss.alpha_unann) == (1, 1, 1)
    assert (loss.partial_loss_mode, loss.likelihood_topk, loss.prior, loss.prior_threshold) == (
        "negative", 5, None, 0.05)
    # The keyword defaults are train.py's flag defaults, and build_criterion of the bare flags equals them.
    defaults = {name: p.default for name, p in inspect.signature(PartialSelectiveLoss).parameters.items()}
    args = train_args()
    assert {name: getattr(args, name) for name in LOSS_FLAGS} == {name: defaults[name] for name in LOSS_FLAGS}
    # reduction is --loss_reduction's, which the CSL modes do not read (they sum, as the paper).
    assert set(defaults) == {*LOSS_FLAGS, "prior", "reduction"} and defaults["reduction"] == "sum"
    assert args.prior_path is None
    assert build_criterion(args, NAMES).extra_repr() == loss.extra_repr()


def test_negative_mode_hand_computed():
    expected = -(ANNOTATED + UNANN_02 + UNANN_03 + UNANN_10)
    assert loss_value(partial_loss_mode="negative") == pytest.approx(expected, rel=1e-5)


def test_ignore_mode_hand_computed():
    assert loss_value(partial_loss_mode="ignore") == pytest.approx(-ANNOTATED, rel=1e-5)


def test_ignore_normalize_classes_hand_computed():
    # Row 0 has 2 annotated entries -> weight 1 + 1/3; row 1 has 3 -> weight 1 + 1/4.
    expected = -((1 + 1 / 3) * (POS_00 + NEG_01) + (1 + 1 / 4) * (POS_11 + NEG_12 + NEG_13))
    assert loss_value(partial_loss_mode="ignore_normalize_classes") == pytest.approx(expected, rel=1e-5)


def test_selective_mode_hand_computed():
    # likelihood_topk 1, batch 2 -> k = 2: the un-annotated entries with p 0.9 and 0.5 are dropped.
    expected = -(ANNOTATED + UNANN_03)
    assert loss_value(partial_loss_mode="selective", likelihood_topk=1) == pytest.approx(expected, rel=1e-5)
    # k = int(0.5 * 2) = 1: only p 0.9 dropped.
    expected = -(ANNOTATED + UNANN_02 + UNANN_03)
    assert loss_value(partial_loss_mode="selective", likelihood_topk=0.5) == pytest.approx(expected, rel=1e-5)
    # k = 5 * 2 = 10 exceeds the 3 un-annotated entries: all of them are dropped.
    assert loss_value(partial_loss_mode="selective", likelihood_topk=5) == pytest.approx(-ANNOTATED, rel=1e-5)


def test_selective_mode_with_prior_hand_computed(tmp_path):
    # Class 2 (prior 0.2 > 0.1) loses its un-annotated entry (0, 2); k = 1 then drops p 0.9.
    values = [0.01, 0.05, 0.2, 0.02]
    prior = torch.tensor(values)
    value = loss_value(partial_loss_mode="selective", likelihood_topk=0.5, prior=prior, prior_threshold=0.1)
    assert value == pytest.approx(-(ANNOTATED + UNANN_03), rel=1e-5)
    # Through the flags and the prior file, k = 0: the prior alone drops (0, 2).
    path = write_prior(tmp_path / "prior.csv", NAMES, values)
    criterion = build_criterion(train_args("--partial_loss_mode", "selective", "--likelihood_topk", "0",
                                           "--prior_path", str(path), "--prior_threshold", "0.1"), NAMES)
    assert loss_value(criterion) == pytest.approx(-(ANNOTATED + UNANN_03 + UNANN_10), rel=1e-5)
    # prior_threshold 0 disables the prior: only the top-k applies.
    value = loss_value(partial_loss_mode="selective", likelihood_topk=0.5, prior=prior, prior_threshold=0)
    assert value == pytest.approx(-(ANNOTATED + UNANN_02 + UNANN_03), rel=1e-5)


def test_selective_top_k_counts_entries_the_prior_already_dropped():
    # Class 0 (prior 0.9) drops (1, 0), which is also the top-1 un-annotated entry, so k = 1
    # drops nothing more: (0, 2) and (0, 3) stay.
    value = loss_value(partial_loss_mode="selective", likelihood_topk=0.5,
                       prior=torch.tensor([0.9, 0.01, 0.01, 0.01]), prior_threshold=0.1)
    assert value == pytest.approx(-(ANNOTATED + UNANN_02 + UNANN_03), rel=1e-5)


def test_prior_is_used_by_selective_mode_only():
    prior = torch.tensor([0.9, 0.9, 0.9, 0.9])
    for mode in ("negative", "ignore", "ignore_normalize_classes"):
        assert loss_value(partial_loss_mode=mode, prior=prior, prior_threshold=0.1) == pytest.approx(
            loss_value(partial_loss_mode=mode), rel=1e-7)
    # Selective, k = 0: the prior alone drops every un-annotated entry.
    assert loss_value(partial_loss_mode="selective", likelihood_topk=0, prior=prior,
                      prior_threshold=0.1) == pytest.approx(-ANNOTATED, rel=1e-5)


def test_clip_gamma_alpha_hand_computed():
    settings = dict(clip=0.1, gamma_pos=1, gamma_neg=2, gamma_unann=3, alpha_pos=2, alpha_neg=0.5,
                    alpha_unann=0.25, partial_loss_mode="negative")
    expected = -(
        2 * L(0.8) * 0.2                 # positive p 0.8: (1-p)^1
        + 0.5 * L(0.85) * 0.15**2        # negative p 0.25: q = 0.75 + 0.1
        + 0.25 * L(0.6) * 0.4**3         # un-annotated p 0.5: q = 0.6
        + 0.25 * L(0.8) * 0.2**3         # un-annotated p 0.3: q = 0.8
        + 0.25 * L(0.2) * 0.8**3         # un-annotated p 0.9: q = 0.2
        + 2 * L(0.6) * 0.4               # positive p 0.6
        + 0.5 * L(1.0) * 0.0**2          # negative p 0.1: q = min(1.0, 1) -> term 0
        + 0.5 * L(0.9) * 0.1**2          # negative p 0.2: q = 0.9
    )
    assert loss_value(**settings) == pytest.approx(expected, rel=1e-5)


def test_gradient_without_focusing_is_p_minus_label():
    logits, targets = hand_inputs()
    logits.requires_grad_(True)
    PartialSelectiveLoss(partial_loss_mode="negative", **NO_FOCUS)(logits, targets).backward()
    # d/dx of -log(p) is p - 1; of -log(1 - p) is p (un-annotated treated as negative).
    expected = torch.tensor([[0.8 - 1, 0.25, 0.5, 0.3], [0.9, 0.6 - 1, 0.1, 0.2]])
    torch.testing.assert_close(logits.grad, expected, rtol=1e-5, atol=1e-6)


def test_probability_floor_gives_constant_loss_and_zero_gradient():
    logits = torch.tensor([[-30.0]], requires_grad=True)  # p ~ 9e-14 < 1e-8
    loss = PartialSelectiveLoss(**NO_FOCUS)(logits, torch.tensor([[1.0]]))
    loss.backward()
    assert loss.item() == pytest.approx(-math.log(1e-8), rel=1e-6)
    assert logits.grad.item() == 0.0


def plain_loss(logits, targets, weights, clip, gamma_pos, gamma_neg, gamma_unann, alpha_pos, alpha_neg,
               alpha_unann):
    """The issue's formula, entry by entry; ``weights`` is the mode weight w."""
    total = torch.zeros((), dtype=torch.float64)
    for i in range(logits.shape[0]):
        for c in range(logits.shape[1]):
            p = torch.sigmoid(logits[i, c].double())
            q = torch.clamp(1 - p + clip, max=1) if clip > 0 else 1 - p
            label = int(targets[i, c])
            if label == 1:
                term = alpha_pos * torch.log(torch.clamp(p, min=1e-8)) * (1 - p.detach()) ** gamma_pos
            else:
                alpha, gamma = (alpha_neg, gamma_neg) if label == 0 else (alpha_unann, gamma_unann)
                term = alpha * torch.log(torch.clamp(q, min=1e-8)) * (1 - q.detach()) ** gamma
            total = total - weights[i][c] * term
    return total


def plain_mode_weights(probs, targets, mode, likelihood_topk=0, ignored_classes=()):
    """Mode weights as nested lists, computed with Python sorting and counting."""
    n, c = len(targets), len(targets[0])
    weights = [[1.0] * c for _ in range(n)]
    unann = [(i, j) for i in range(n) for j in range(c) if targets[i][j] == -1]
    if mode in ("ignore", "ignore_normalize_classes"):
        for i in range(n):
            n_annotated = sum(1 for j in range(c) if targets[i][j] != -1)
            for j in range(c):
                scale = 1 + 1 / (1 + n_annotated) if mode == "ignore_normalize_classes" else 1.0
                weights[i][j] = 0.0 if targets[i][j] == -1 else scale
    elif mode == "selective":
        for i, j in unann:
            if j in ignored_classes:
                weights[i][j] = 0.0
        for i, j in sorted(unann, key=lambda e: -probs[e[0]][e[1]])[: int(likelihood_topk * n)]:
            weights[i][j] = 0.0
    return weights


def random_case(seed, n=5, c=7, unann_fraction=0.5):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=generator) * 2
    targets = (torch.rand(n, c, generator=generator) < 0.3).float()
    targets[torch.rand(n, c, generator=generator) < unann_fraction] = -1
    return logits, targets


@pytest.mark.parametrize("mode", CSL_MODES)
@pytest.mark.parametrize("clip", [0.0, 0.05])
def test_value_and_gradient_match_the_plain_formula(mode, clip):
    settings = dict(clip=clip, gamma_pos=1.0, gamma_neg=2.0, gamma_unann=3.0, alpha_pos=1.5, alpha_neg=0.7,
                    alpha_unann=0.4)
    logits, targets = random_case(seed=len(mode) + int(clip * 100))
    prior_values = [0.01, 0.3, 0.02, 0.5, 0.01, 0.04, 0.2]
    loss_fn = PartialSelectiveLoss(partial_loss_mode=mode, likelihood_topk=1,
                                   prior=torch.tensor(prior_values), prior_threshold=0.1, **settings)
    ours_logits = logits.clone().requires_grad_(True)
    ours = loss_fn(ours_logits, targets)
    ours.backward()

    ignored = {j for j, v in enumerate(prior_values) if v > 0.1}
    weights = plain_mode_weights(torch.sigmoid(logits).tolist(), targets.tolist(), mode, 1, ignored)
    plain_logits = logits.double().clone().requires_grad_(True)
    expected = plain_loss(plain_logits, targets, weights, **settings)
    expected.backward()
    torch.testing.assert_close(ours.double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours_logits.grad.double(), plain_logits.grad, rtol=1e-4, atol=1e-6)


def test_selective_without_prior_and_zero_topk_equals_negative():
    logits, targets = random_case(seed=3, n=6, c=9)
    negative = PartialSelectiveLoss(partial_loss_mode="negative")(logits, targets)
    selective = PartialSelectiveLoss(partial_loss_mode="selective", likelihood_topk=0)(logits, targets)
    torch.testing.assert_close(selective, negative)


def test_ignore_equals_negative_when_nothing_is_unannotated():
    logits, targets = random_case(seed=4, n=6, c=9, unann_fraction=0.0)
    assert not (targets == -1).any()
    torch.testing.assert_close(PartialSelectiveLoss(partial_loss_mode="ignore")(logits, targets),
                               PartialSelectiveLoss(partial_loss_mode="negative")(logits, targets))
    assert PartialSelectiveLoss(partial_loss_mode="ignore")(logits, targets).item() != pytest.approx(
        PartialSelectiveLoss(partial_loss_mode="ignore")(logits, torch.full_like(targets, -1)).item())


def zero_gradient_entries(loss_fn, logits, targets) -> set[tuple[int, int]]:
    leaf = logits.clone().requires_grad_(True)
    loss_fn(leaf, targets).backward()
    return {tuple(index) for index in (leaf.grad == 0).nonzero().tolist()}


@pytest.mark.parametrize("topk", [1, 2, 100])
def test_selective_drops_exactly_the_k_most_likely_unannotated_entries(topk):
    logits, targets = random_case(seed=5, n=4, c=10, unann_fraction=0.6)
    probs = torch.sigmoid(logits)
    unann = [(i, j) for i, j in (targets == -1).nonzero().tolist()]
    expected = set(sorted(unann, key=lambda e: -probs[e].item())[: topk * 4])
    loss_fn = PartialSelectiveLoss(partial_loss_mode="selective", likelihood_topk=topk, gamma_unann=2)
    assert zero_gradient_entries(loss_fn, logits, targets) == expected
    assert len(expected) == min(topk * 4, len(unann))


def test_prior_threshold_drops_unannotated_entries_of_frequent_classes_only():
    logits, targets = random_case(seed=6, n=6, c=5, unann_fraction=0.5)
    loss_fn = PartialSelectiveLoss(partial_loss_mode="selective", likelihood_topk=0,
                                   prior=torch.tensor([0.5, 0.01, 0.3, 0.02, 0.1]), prior_threshold=0.2)
    expected = {(i, j) for i, j in (targets == -1).nonzero().tolist() if j in (0, 2)}
    assert expected  # the case has un-annotated entries in the frequent classes
    assert zero_gradient_entries(loss_fn, logits, targets) == expected


def test_prior_is_a_non_persistent_float32_copy():
    source = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    loss_fn = PartialSelectiveLoss(partial_loss_mode="selective", prior=source)
    source[0] = 0.9
    assert loss_fn.prior.dtype == torch.float32
    torch.testing.assert_close(loss_fn.prior, torch.tensor([0.1, 0.2, 0.3]))
    assert "prior" not in loss_fn.state_dict()  # the CSV is the source of truth
    assert "prior" in dict(loss_fn.named_buffers())  # ... but it follows .to(device)
    with pytest.raises(ValueError, match=r"shape \(C,\)"):
        PartialSelectiveLoss(prior=torch.zeros(2, 3))


def test_prior_size_is_checked_against_the_logits():
    loss_fn = PartialSelectiveLoss(partial_loss_mode="selective", prior=torch.tensor([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="prior has 3 values but the logits have 4 classes"):
        loss_fn(torch.zeros(2, 4), torch.zeros(2, 4))
    # All negatives at p = 0.5: 6 entries of 0.5^1 * log(2).
    expected = 6 * 0.5 * math.log(2)
    assert loss_fn(torch.zeros(2, 3), torch.zeros(2, 3)).item() == pytest.approx(expected, rel=1e-6)


def test_bad_settings_and_inputs_are_rejected():
    valid = "'negative', 'ignore', 'ignore_normalize_classes', 'selective'"
    with pytest.raises(ValueError, match=f"'selectve'.*{valid}"):
        PartialSelectiveLoss(partial_loss_mode="selectve")
    with pytest.raises(ValueError, match=f"None.*{valid}"):
        PartialSelectiveLoss(partial_loss_mode=None)  # the keyword class takes no paper-style None
    with pytest.raises(TypeError, match="gama_neg"):
        PartialSelectiveLoss(gama_neg=2)
    with pytest.raises(TypeError, match="positional"):
        PartialSelectiveLoss(argparse.Namespace())  # keywords only: a Namespace goes to build_criterion
    with pytest.raises(ValueError, match="gamma_neg must be >= 0"):
        PartialSelectiveLoss(gamma_neg=-1)
    with pytest.raises(ValueError, match=r"clip must be in \[0, 1\)"):
        PartialSelectiveLoss(clip=1.0)
    loss_fn = PartialSelectiveLoss()
    with pytest.raises(ValueError, match="same shape"):
        loss_fn(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"1 \(positive\), 0 \(negative\) and -1"):
        loss_fn(torch.zeros(1, 2), torch.tensor([[1.0, 2.0]]))


def test_autocast_bfloat16_gives_a_float32_loss_close_to_float32():
    torch.manual_seed(0)
    layer = nn.Linear(16, 6)
    features = torch.randn(8, 16)
    targets = torch.randint(-1, 2, (8, 6)).float()
    loss_fn = PartialSelectiveLoss(partial_loss_mode="selective", likelihood_topk=1, gamma_neg=2,
                                   gamma_unann=4)
    reference = loss_fn(layer(features), targets)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        logits = layer(features)
        loss = loss_fn(logits, targets)
    assert logits.dtype == torch.bfloat16
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, reference, rtol=3e-2, atol=1e-3)
    loss.backward()
    # Gradient of the autocast loss = that of the float32 loss at the bfloat16 logits' values (the loss
    # runs in float32), chained through the bfloat16 linear layer.
    rounded = logits.detach().float().requires_grad_(True)
    loss_fn(rounded, targets).backward()
    expected_grad = (rounded.grad.bfloat16().float().T @ features.bfloat16().float())
    torch.testing.assert_close(layer.weight.grad, expected_grad, rtol=2e-2, atol=1e-2)
    # The bfloat16 logits are used exactly as their float32 values.
    torch.testing.assert_close(loss, loss_fn(logits.detach().float(), targets))


# --------------------------------------------------------------------------- build_criterion
def test_build_criterion_reads_every_loss_flag(tmp_path):
    path = write_prior(tmp_path / "prior.csv", ["c", "a", "d", "b"], [0.3, 0.1, 0.4, 0.2])
    args = train_args("--partial_loss_mode", "selective", "--clip", "0.05", "--gamma_pos", "1.5",
                      "--gamma_neg", "3", "--gamma_unann", "4", "--alpha_pos", "2", "--alpha_neg", "0.5",
                      "--alpha_unann", "0.8", "--likelihood_topk", "2", "--prior_threshold", "0.25",
                      "--prior_path", str(path))
    criterion = build_criterion(args, NAMES)
    assert type(criterion) is PartialSelectiveLoss
    assert (criterion.partial_loss_mode, criterion.clip, criterion.likelihood_topk,
            criterion.prior_threshold) == ("selective", 0.05, 2, 0.25)
    assert (criterion.gamma_pos, criterion.gamma_neg, criterion.gamma_unann) == (1.5, 3, 4)
    assert (criterion.alpha_pos, criterion.alpha_neg, criterion.alpha_unann) == (2, 0.5, 0.8)
    # The file's rows are matched to the model's classes by name.
    torch.testing.assert_close(criterion.prior, torch.tensor([0.1, 0.2, 0.3, 0.4]))
    keywords = dict(partial_loss_mode="selective", clip=0.05, gamma_pos=1.5, gamma_neg=3, gamma_unann=4,
                    alpha_pos=2, alpha_neg=0.5, alpha_unann=0.8, likelihood_topk=2, prior_threshold=0.25,
                    prior=torch.tensor([0.1, 0.2, 0.3, 0.4]))
    logits, targets = random_case(seed=9, n=3, c=4, unann_fraction=0.6)
    torch.testing.assert_close(criterion(logits, targets), PartialSelectiveLoss(**keywords)(logits, targets))
    assert criterion.extra_repr() == PartialSelectiveLoss(**keywords).extra_repr()


@pytest.mark.parametrize("mode", ["negative", "ignore", "ignore_normalize_classes"])
def test_build_criterion_rejects_a_prior_outside_selective_mode(tmp_path, mode):
    path = write_prior(tmp_path / "prior.csv", NAMES, [0.1, 0.2, 0.3, 0.4])
    args = train_args("--partial_loss_mode", mode, "--prior_path", str(path))
    with pytest.raises(ValueError, match=f"--prior_path .*prior.csv.* only used by --partial_loss_mode "
                                         f"selective.*'{mode}'.*drop --prior_path"):
        build_criterion(args, NAMES)
    args.prior_path = None
    assert build_criterion(args, NAMES).prior is None


def test_build_criterion_checks_the_prior_file(tmp_path):
    args = train_args("--partial_loss_mode", "selective", "--prior_path", str(tmp_path / "nowhere.csv"))
    with pytest.raises(FileNotFoundError, match="nowhere.csv.*omit --prior_path"):
        build_criterion(args, NAMES)
    args.prior_path = str(write_prior(tmp_path / "prior.csv", ["a", "b", "c"], [0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match=r"prior.csv.*does not match the model's classes: missing 1 \['d'\]"):
        build_criterion(args, NAMES)
    with pytest.raises(AttributeError, match=r"lacks the loss flag\(s\) \['gamma_unann'\]"):
        build_criterion(argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "gamma_unann"}),
                        NAMES)


@pytest.mark.parametrize("spelling", ["none", "None", ""])
def test_prior_path_none_on_the_command_line_means_no_prior(spelling):
    args = train_args("--partial_loss_mode", "selective", "--likelihood_topk", "0", "--prior_path", spelling)
    assert args.prior_path is None
    criterion = build_criterion(args, [f"c{j}" for j in range(9)])
    assert criterion.prior is None
    args.prior_path = spelling  # a Namespace built otherwise: the same words mean no prior
    assert build_criterion(args, [f"c{j}" for j in range(9)]).prior is None
    logits, targets = random_case(seed=3, n=6, c=9)
    torch.testing.assert_close(criterion(logits, targets), PartialSelectiveLoss(partial_loss_mode="negative")(
        logits, targets))


# --------------------------------------------------------------------------- the paper's import surface
def test_compat_import_of_the_papers_partial_selective_loss(tmp_path):
    from src.loss_functions.partial_asymmetric_loss import PartialSelectiveLoss as PaperLoss

    path = write_prior(tmp_path / "prior.csv", [f"c{j}" for j in range(7)], [0.2, 0.01, 0.3, 0, 0, 0.5, 0.01])
    settings = dict(clip=0.05, gamma_pos=1.0, gamma_neg=3.0, gamma_unann=4.0, alpha_pos=1.0, alpha_neg=0.5,
                    alpha_unann=0.8, partial_loss_mode="selective", likelihood_topk=1, prior_threshold=0.1)
    args = argparse.Namespace(lr=1e-4, batch_size=64, prior_path=str(path), **settings)  # extra flags ignored
    logits, targets = random_case(seed=7)
    paper = PaperLoss(args)  # the paper's call
    assert isinstance(paper, PartialSelectiveLoss) and paper.prior_path == str(path)
    torch.testing.assert_close(paper.prior, torch.tensor([0.2, 0.01, 0.3, 0, 0, 0.5, 0.01]))
    keywords = PartialSelectiveLoss(prior=paper.prior, **settings)
    built = build_criterion(args, [f"c{j}" for j in range(7)])
    assert paper.extra_repr() == keywords.extra_repr() == built.extra_repr()
    torch.testing.assert_close(paper(logits, targets), keywords(logits, targets))
    torch.testing.assert_close(paper(logits, targets), built(logits, targets))
    # class_names matches the rows by name.
    reordered = PaperLoss(args, class_names=[f"c{j}" for j in reversed(range(7))])
    torch.testing.assert_close(reordered.prior, paper.prior.flip(0))


def test_compat_loss_reads_the_namespace_as_the_papers_code(tmp_path):
    from src.loss_functions.partial_asymmetric_loss import PartialSelectiveLoss as PaperLoss

    defaults = PaperLoss(argparse.Namespace())  # every flag missing: train.py's defaults
    assert defaults.extra_repr() == PartialSelectiveLoss().extra_repr() and defaults.prior_path is None
    paper_none = PaperLoss(argparse.Namespace(partial_loss_mode=None, clip=None, prior_path="None"))
    assert (paper_none.partial_loss_mode, paper_none.clip, paper_none.prior) == ("negative", 0.0, None)
    # As in the paper's code a prior is read in every mode (and used by selective mode only) ...
    path = write_prior(tmp_path / "prior.csv", ["a", "b", "c"], [0.1, 0.2, 0.3])
    negative = PaperLoss(argparse.Namespace(partial_loss_mode="negative", prior_path=str(path)))
    torch.testing.assert_close(negative.prior, torch.tensor([0.1, 0.2, 0.3]))
    # ... and its row count is checked against args.num_classes at construction, naming the file.
    with pytest.raises(ValueError, match="prior.csv.*3 rows but the model has 4 classes"):
        PaperLoss(argparse.Namespace(partial_loss_mode="selective", prior_path=str(path), num_classes=4))
    with pytest.raises(FileNotFoundError, match="nowhere.csv.*omit --prior_path"):
        PaperLoss(argparse.Namespace(partial_loss_mode="selective", prior_path=str(tmp_path / "nowhere.csv")))


def test_compat_import_of_the_papers_compute_prior():
    import src.prior
    from src.loss_functions.partial_asymmetric_loss import ComputePrior

    assert ComputePrior is src.prior.ComputePrior
    prior = ComputePrior({0: "cat", 1: "dog"})  # the paper passes a mapping whose values are the names
    prior.update(torch.tensor([[logit(0.2), logit(0.9)], [logit(0.4), logit(0.5)]]))
    torch.testing.assert_close(prior.avg_pred_train, torch.tensor([0.3, 0.7]))


def test_compat_import_of_the_asymmetric_losses():
    import src.loss_functions
    from src.loss_functions.losses import AsymmetricLoss as PaperASL
    from src.loss_functions.losses import AsymmetricLossOptimized as PaperASLOptimized

    assert PaperASL is src.loss_functions.AsymmetricLoss
    assert PaperASLOptimized is src.loss_functions.AsymmetricLossOptimized
    x, y = torch.tensor([[logit(0.8), logit(0.25)]]), torch.tensor([[1.0, 0.0]])
    expected = -(L(0.8) * 0.2 + L(0.8) * 0.2**4)  # the paper's defaults: gamma_neg 4, gamma_pos 1, clip 0.05
    assert PaperASL()(x, y).item() == pytest.approx(expected, rel=1e-5)
    assert PaperASLOptimized()(x, y).item() == pytest.approx(expected, rel=1e-5)


# --------------------------------------------------------------------------- ASL
def plain_asl(x, y, gamma_neg, gamma_pos, clip, eps, detach_focusing):
    p = torch.sigmoid(x)
    q = (1 - p + clip).clamp(max=1) if clip > 0 else 1 - p
    pt = p * y + q * (1 - y)
    base = 1 - pt.detach() if detach_focusing else 1 - pt
    focusing = base ** (gamma_pos * y + gamma_neg * (1 - y))
    return -((y * torch.log(p.clamp(min=eps)) + (1 - y) * torch.log(q.clamp(min=eps))) * focusing).sum()


def test_asl_hand_computed():
    x = torch.tensor([[logit(0.8), logit(0.25)]])
    y = torch.tensor([[1.0, 0.0]])
    # Positive: log(0.8) (1-0.8)^1; negative: q = 0.75 + 0.05 = 0.8, weight (1-0.8)^4.
    expected = -(L(0.8) * 0.2 + L(0.8) * 0.2**4)
    for loss_cls in (AsymmetricLoss, AsymmetricLossOptimized):
        assert loss_cls()(x, y).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("disable_grad", [True, False])
@pytest.mark.parametrize("clip", [0.0, 0.05])
def test_asl_variants_agree_with_each_other_and_the_plain_formula(disable_grad, clip):
    generator = torch.Generator().manual_seed(8)
    x = torch.randn(6, 9, generator=generator) * 3
    y = (torch.rand(6, 9, generator=generator) < 0.4).float()
    settings = dict(gamma_neg=4, gamma_pos=1, clip=clip, eps=1e-8)
    grads, values = [], []
    for loss_fn in (AsymmetricLoss(**settings, disable_torch_grad_focal_loss=disable_grad),
                    AsymmetricLossOptimized(**settings, disable_torch_grad_focal_loss=disable_grad)):
        leaf = x.clone().requires_grad_(True)
        values.append(loss_fn(leaf, y))
        values[-1].backward()
        grads.append(leaf.grad)
    leaf = x.double().clone().requires_grad_(True)
    expected = plain_asl(leaf, y.double(), **settings, detach_focusing=disable_grad)
    expected.backward()
    torch.testing.assert_close(values[0], values[1])
    torch.testing.assert_close(grads[0], grads[1])
    torch.testing.assert_close(values[0].double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[0].double(), leaf.grad, rtol=1e-4, atol=1e-6)


def test_record_ignored_reports_the_likelihood_top_k_and_leaves_the_loss_alone():
    rng = np.random.default_rng(11)
    logits = torch.from_numpy(rng.normal(size=(6, 5)).astype(np.float32))
    targets = torch.from_numpy(rng.choice([1, 0, -1, -1], size=(6, 5)).astype(np.float32))
    indices = torch.tensor([40, 41, 42, 43, 44, 45])
    loss = PartialSelectiveLoss(partial_loss_mode="selective", likelihood_topk=1, prior=None)
    plain = loss(logits, targets, indices=indices)
    seen = []
    loss.record_ignored(lambda samples, classes: seen.extend(zip(samples.tolist(), classes.tolist())))
    assert torch.equal(loss(logits, targets, indices=indices), plain)
    # Independent expectation: the 6 (= topk 1 x batch 6) un-annotated entries of highest probability.
    probs = 1 / (1 + np.exp(-logits.numpy()))
    candidates = [(probs[i, c], i, c) for i in range(6) for c in range(5) if targets[i, c] == -1]
    expected = {(40 + i, c) for _, i, c in sorted(candidates, reverse=True)[:6]}
    assert set(seen) == expected and len(seen) == 6
    loss.record_ignored(None)
    loss(logits, targets, indices=indices)
    assert len(seen) == 6
