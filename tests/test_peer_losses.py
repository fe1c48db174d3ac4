"""The later partial-label methods compared with CSL (src.loss_functions.create_loss, docs/peer_methods.md).

Faithfulness: each mode is checked against a plain re-statement, written here, of its official code at
its default hyper-parameters (the repositories are named in each function; nothing is imported from
them): un-annotated (-1) is mapped to the method's "unknown" label, values and gradients must agree on
random batches and across the epoch schedule. The re-statements follow the official code's own steps
(boolean-indexed loss matrices, ``pow``, ``log(x + eps)``, sorting instead of our top-k, their float
running subtraction for LL's clean rate) and add our one adaptation, -log(1 - p) on known negatives.
"""

from __future__ import annotations

import argparse
import ast
import math
import os
import re
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

import src.loss_functions
from src.args import (
    build_train_parser,
    decay,
    fraction,
    non_negative_int,
    positive_float,
    positive_int,
    probability,
)
from src.data.labels import LabelMatrix
from src.data.partial_labels import simulate_partial_labels
from src.loss_functions import (
    CSL_MODES,
    LOSS_HYPERPARAMETERS,
    LOSS_MODE_NAMES,
    LOSS_MODES,
    LOSS_SETTING_NAMES,
    LOSS_SETTINGS,
    PEER_MODES,
    PartialSelectiveLoss,
    build_criterion,
    create_loss,
)
from src.loss_functions import label_store as label_store_module
from src.loss_functions.cole import expected_positives_per_image
from src.reproduce.protocols import PEER_LABELS
from src.utils.values import is_none_path, optional_path

LOSS_PACKAGE = Path(src.loss_functions.__file__).parent
STORE_MODES = ("ll_cp", "em_apl")
SCHEDULE_MODES = ("splc", "ll_r", "ll_ct", "ll_cp", "gr")
OFFICIAL_REDUCTION = {"an_ls": "mean", "epr": "mean", "hill": "sum", "splc": "sum", "ll_r": "mean",
                      "ll_ct": "mean", "ll_cp": "mean", "em": "mean", "em_apl": "mean", "gr": "mean"}


# --------------------------------------------------------------------------- inputs
def random_batch(seed: int, batch: int = 6, classes: int = 9, negatives: bool = False):
    """float32 logits and targets: ~30% positives, the rest un-annotated (or ~30% known negatives)."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, classes, generator=generator) * 2
    draw = torch.rand(batch, classes, generator=generator)
    targets = torch.where(draw < 0.3, 1.0, -1.0)
    if negatives:
        targets[(draw >= 0.3) & (draw < 0.6)] = 0.0
    return logits, targets


def masks(targets):
    return targets == 1, targets == -1, targets == 0


def neg_log(x, eps):
    return -torch.log(x + eps)


def as_mean(matrix):
    """Their compute_batch_loss: every entry divided by B * C, then summed."""
    return (matrix / matrix.numel()).sum()


# --------------------------------------------------------------------------- re-statements
def official_an_ls(logits, targets, ls=0.1):
    """elijahcole/single-positive-multi-label losses.py loss_an_ls (ls_coef 0.1, train.py)."""
    p = torch.sigmoid(logits)
    pos, unk, neg = masks(targets)
    out = torch.zeros_like(p)
    out[pos] = (1 - ls) * neg_log(p[pos], 1e-5) + ls * neg_log(1 - p[pos], 1e-5)
    out[unk] = (1 - ls) * neg_log(1 - p[unk], 1e-5) + ls * neg_log(p[unk], 1e-5)
    out[neg] = -torch.log(1 - p[neg])
    return as_mean(out)


def official_epr(logits, targets, expected=2.9):
    """losses.py loss_epr + expected_positive_regularizer (norm 2, / C^2), added outside the mean."""
    p = torch.sigmoid(logits)
    pos, _, neg = masks(targets)
    out = torch.zeros_like(p)
    out[pos] = neg_log(p[pos], 1e-5)
    out[neg] = -torch.log(1 - p[neg])
    regulariser = (p.sum(1).mean(0) - expected) ** 2 / p.shape[1] ** 2
    return as_mean(out) + regulariser


def official_hill(logits, targets, lamb=1.5, margin=1.0, gamma=2.0):
    """xinyu1205/robust-loss-mlml losses.py Hill (sum): targets 1 / 0 (unknown)."""
    y = (targets == 1).to(logits.dtype)
    pred_pos, pred_neg = torch.sigmoid(logits - margin), torch.sigmoid(logits)
    focal_weight = ((1 - pred_pos) * y + (1 - y)) ** gamma
    loss = -(y * torch.log(pred_pos) + (1 - y) * -(lamb - pred_neg) * pred_neg**2) * focal_weight
    neg = targets == 0
    loss[neg] = -torch.log(1 - pred_neg[neg])
    return loss.sum()


def official_splc(logits, targets, epoch, tau=0.6, margin=1.0, gamma=2.0, change_epoch=1):
    """losses.py SPLC (sum); their train.py passes the 0-based epoch, so correction from our epoch 2."""
    y = (targets == 1).to(logits.dtype)
    shifted = torch.where(y == 1, logits - margin, logits)
    if epoch - 1 >= change_epoch:
        # Known negatives are known: not relabelled (our adaptation; their data has none).
        y = torch.where((torch.sigmoid(shifted) > tau) & (targets != 0), torch.ones_like(y), y)
    pred = torch.sigmoid(shifted)
    focal_weight = ((1 - pred) * y + pred * (1 - y)) ** gamma
    loss = -(y * F.logsigmoid(shifted) + (1 - y) * F.logsigmoid(-shifted)) * focal_weight
    neg = targets == 0
    loss[neg] = -torch.log(1 - torch.sigmoid(logits[neg]))
    return loss.sum()


def official_em(logits, targets, alpha=0.1):
    """Correr-Zhou/SPML-AckTheUnknown losses.py loss_EM (alpha 0.1, COCO)."""
    p = torch.sigmoid(logits)
    pos, unk, neg = masks(targets)
    out = torch.zeros_like(p)
    out[pos] = neg_log(p[pos], 1e-5)
    out[unk] = -alpha * (p[unk] * neg_log(p[unk], 1e-5) + (1 - p[unk]) * neg_log(1 - p[unk], 1e-5))
    out[neg] = -torch.log(1 - p[neg])
    return as_mean(out)


def official_em_apl(logits, observed, known_negative, alpha=0.1, beta=0.9):
    """losses.py loss_EM_APL: ``observed`` holds 1, 0 (unknown) and -s (soft pseudo-label s)."""
    p = torch.sigmoid(logits)
    out = torch.zeros_like(p)
    pos, unk, pseudo = observed == 1, (observed == 0) & ~known_negative, observed < 0
    out[pos] = neg_log(p[pos], 1e-5)
    out[unk] = -alpha * (p[unk] * neg_log(p[unk], 1e-5) + (1 - p[unk]) * neg_log(1 - p[unk], 1e-5))
    s = -observed[pseudo]
    out[pseudo] = beta * (s * neg_log(p[pseudo], 1e-5) + (1 - s) * neg_log(1 - p[pseudo], 1e-5))
    out[known_negative] = -torch.log(1 - p[known_negative])
    return as_mean(out)


def gr_schedule(epoch, num_epochs, beta=(0, 2, -2, -2), alpha=(0.5, 2, 0.8, 0.5), n=0):
    """yan4xi1/GRLoss train.py (config.py defaults --beta, --alpha, --linear_init 0)."""
    w0, wt, b0, bt = beta
    mu0, sigma0, mut, sigmat = alpha
    w = w0 + (wt - w0) * max(epoch - n - 1, 0) / (num_epochs - n)
    b = b0 + (bt - b0) * max(epoch - n - 1, 0) / (num_epochs - n)
    mu = mu0 + (mut - mu0) * max(epoch - n, 0) / (num_epochs - n)
    sigma = sigma0 + (sigmat - sigma0) * max(epoch - n, 0) / (num_epochs - n)
    return w, b, mu, sigma


def official_gr(logits, targets, epoch, num_epochs, q2=0.01, q3=1.0):
    """GRLoss losses.py GR_loss with models.py KFunction / VFunction of the detached p."""
    w, b, mu, sigma = gr_schedule(epoch, num_epochs)
    p = torch.sigmoid(logits)
    detached = p.detach()
    k = 1 / (1 + torch.exp(-(w * detached + b)))
    v = torch.exp(-0.5 * ((detached - mu) / sigma) ** 2)
    pos, unk, neg = masks(targets)
    out = torch.zeros_like(p)
    out[pos] = neg_log(p[pos], 1e-7)
    out[unk] = v[unk] * (k[unk] * (1 - torch.pow(p[unk], q2)) / q2
                         + (1 - k[unk]) * (1 - torch.pow(1 - p[unk], q3)) / q3)
    out[neg] = -torch.log(1 - p[neg])
    return out.mean()


LL_DELTAS = {"ll_r": 0.5 / 100, "ll_ct": 0.2 / 100, "ll_cp": 0.1 / 100}  # BoostLU config.py, in percent


def official_large_loss(logits, targets, scheme, epoch, delta=None):
    """BoostLU losses.py compute_batch_loss in its OpenImages setting (-1 unobserved, 0 negative); the
    clean rate as its train.py keeps it. Returns (loss, chosen mask or None)."""
    delta = LL_DELTAS[scheme] if delta is None else delta
    clean_rate = 1.0
    for _ in range(epoch - 1):
        clean_rate -= delta
    unobserved = targets == -1
    y = targets.clamp(min=0)
    loss = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
    corrected = F.binary_cross_entropy_with_logits(logits, (y == 0).to(y.dtype), reduction="none")
    if clean_rate == 1:
        return loss.mean(), None
    batch, classes = logits.shape
    k = math.ceil(batch * classes * (delta if scheme == "ll_cp" else 1 - clean_rate))
    unobserved_loss = unobserved * loss
    kth = torch.sort(unobserved_loss.detach().flatten(), descending=True).values[k - 1]
    assert kth > 0  # the regime where only un-annotated entries can be chosen
    chosen = unobserved_loss >= kth
    replacement = torch.zeros_like(loss) if scheme == "ll_r" else corrected
    return torch.where(chosen, replacement, loss).mean(), chosen


def official(mode, logits, targets, epoch, num_epochs):
    """The re-statement of ``mode`` with its official reduction."""
    if mode in ("ll_r", "ll_ct"):
        return official_large_loss(logits, targets, mode, epoch)[0]
    plain = {"an_ls": official_an_ls, "epr": official_epr, "hill": official_hill, "em": official_em}
    if mode in plain:
        return plain[mode](logits, targets)
    if mode == "splc":
        return official_splc(logits, targets, epoch)
    return official_gr(logits, targets, epoch, num_epochs)


def value_and_grad(loss_fn, logits, targets, dtype=torch.float32, **keywords):
    leaf = logits.to(dtype).clone().requires_grad_(True)
    value = loss_fn(leaf, targets.to(dtype), **keywords)
    value.backward()
    return value.detach().double(), leaf.grad.double()


def assert_matches(ours, expected, scale=1.0):
    value, grad = ours
    ref_value, ref_grad = expected
    torch.testing.assert_close(value, ref_value * scale, rtol=2e-5, atol=1e-6)
    atol = 1e-6 * float(ref_grad.abs().max() * scale) + 1e-12
    torch.testing.assert_close(grad, ref_grad * scale, rtol=1e-4, atol=atol)


# --------------------------------------------------------------------------- the table
def test_every_mode_is_in_the_table_with_the_official_defaults():
    expected = {
        "an_ls": {"an_ls_smoothing": 0.1}, "epr": {"epr_expected_positives": 2.9},
        "hill": {"hill_lambda": 1.5, "hill_margin": 1.0, "hill_gamma": 2.0},
        "splc": {"splc_tau": 0.6, "splc_margin": 1.0, "splc_gamma": 2.0, "splc_start_epoch": 2},
        "ll_r": {"ll_r_delta": 0.005}, "ll_ct": {"ll_ct_delta": 0.002}, "ll_cp": {"ll_cp_delta": 0.001},
        "em": {"em_alpha": 0.1},
        "em_apl": {"em_alpha": 0.1, "apl_beta": 0.9, "apl_share": 0.9, "apl_warmup_epochs": 5},
        "gr": {"gr_q2": 0.01, "gr_q3": 1.0, "gr_w_start": 0.0, "gr_w_end": 2.0, "gr_b_start": -2.0,
               "gr_b_end": -2.0, "gr_mu_start": 0.5, "gr_mu_end": 0.8, "gr_sigma_start": 2.0,
               "gr_sigma_end": 0.5},
    }
    assert set(PEER_MODES) == set(expected)
    assert LOSS_MODE_NAMES == ("negative", "ignore", "ignore_normalize_classes", "selective", *expected)
    for mode, defaults in expected.items():
        info = LOSS_MODES[mode]
        assert {name: entry.default for name, entry in info.hyperparameters.items()} == defaults
        assert info.reference and info.repository.startswith("github.com/")
        assert all(entry.help for entry in info.hyperparameters.values())
    assert LOSS_MODES["selective"].hyperparameters["likelihood_topk"].default == 5
    assert set(LOSS_HYPERPARAMETERS) >= {"clip", "gamma_unann", "ll_cp_delta", "gr_sigma_end"}
    # The one flag whose unset value (None) is computed from the training labels.
    unset = [name for name, entry in LOSS_HYPERPARAMETERS.items() if entry.flag_default is None]
    assert unset == ["epr_expected_positives"]


@pytest.mark.parametrize("mode", LOSS_MODE_NAMES)
def test_every_mode_takes_the_common_call(mode):
    store = dict(num_samples=6, num_classes=9) if mode in STORE_MODES else {}
    loss_fn = create_loss(mode, **store)
    logits, targets = random_batch(seed=1, negatives=True)
    value, grad = value_and_grad(loss_fn, logits, targets, epoch=3, num_epochs=10, indices=torch.arange(6))
    assert torch.isfinite(value) and torch.isfinite(grad).all() and value.dtype == torch.float64


# --------------------------------------------------------------------------- one table owns the vocabulary
# A value just outside each bound the table uses (a new kind of bound must be added here).
OUTSIDE = {">= 0": "-1", "> 0": "0", "in [0, 1)": "1", "in [0, 1]": "1.5", "a probability in [0, 1]": "1.5",
           "an integer >= 1": "0"}


def loss_flag_actions() -> dict[str, argparse.Action]:
    return {action.dest: action for action in build_train_parser()._actions}


def test_csl_modes_and_all_modes_have_different_names():
    assert CSL_MODES == ("negative", "ignore", "ignore_normalize_classes", "selective")
    assert len(LOSS_MODE_NAMES) == 14 and LOSS_MODE_NAMES[:4] == CSL_MODES  # 4 + 10 peers
    assert PEER_MODES == LOSS_MODE_NAMES[4:]
    assert not hasattr(src.loss_functions, "PARTIAL_LOSS_MODES")  # the name that meant both
    assert loss_flag_actions()["partial_loss_mode"].choices == LOSS_MODE_NAMES


def test_every_loss_flag_is_generated_from_the_table():
    actions = loss_flag_actions()
    table = {**LOSS_SETTINGS, **LOSS_HYPERPARAMETERS}
    assert set(table) == set(LOSS_SETTING_NAMES)
    for name, entry in table.items():
        action = actions[name]
        assert action.help.replace("%%", "%").startswith(entry.help), name
        assert action.default == entry.flag_default, name
        assert f"--{name}" in action.option_strings and f"--{name.replace('_', '-')}" in action.option_strings
    # One help text per flag, the table's: --clip's is the one written in modes.py.
    assert actions["clip"].help == "CSL modes: probability margin of the negative terms (ASL clip)"
    assert actions["epr_expected_positives"].help.endswith("required otherwise (fpc, --partial_labels))")
    help_text = build_train_parser().format_help()
    assert help_text.count("probability margin of the negative terms") == 1


@pytest.mark.parametrize("name", [name for name, entry in LOSS_HYPERPARAMETERS.items() if entry.bound])
def test_a_value_outside_the_bound_is_refused_by_the_flag_and_the_loss(name, capsys):
    bound = LOSS_HYPERPARAMETERS[name].bound
    value = OUTSIDE[bound]
    with pytest.raises(SystemExit):
        build_train_parser().parse_args([f"--{name}", value])
    error = capsys.readouterr().err
    assert f"argument --{name}" in error and f"must be {bound}" in error
    mode = next(mode for mode, info in LOSS_MODES.items() if name in info.hyperparameters)
    store = dict(num_samples=2, num_classes=3) if mode in STORE_MODES else {}
    with pytest.raises(ValueError, match=re.escape(f"{name} must be {bound}, got {value}")):
        create_loss(mode, **store, **{name: int(value) if value.lstrip("-").isdigit() else float(value)})


def test_the_bounds_are_those_of_the_papers():
    bounds = {name: entry.bound for name, entry in LOSS_HYPERPARAMETERS.items() if entry.bound}
    assert [bounds[name] for name in ("clip", "likelihood_topk", "prior_threshold", "splc_start_epoch")] == [
        "in [0, 1)", ">= 0", "a probability in [0, 1]", "an integer >= 1"]
    assert (bounds["gr_q2"], bounds["ll_r_delta"], bounds["an_ls_smoothing"]) == (
        "> 0", "in [0, 1]", "in [0, 1)")
    assert bounds["alpha_pos"] == ">= 0" and "gr_b_start" not in bounds  # issue 18: class weights >= 0
    args = build_train_parser().parse_args(["--likelihood_topk", "0", "--prior_threshold", "1",
                                            "--clip", "0.99"])
    assert (args.likelihood_topk, args.prior_threshold, args.clip) == (0, 1.0, 0.99)


def test_loss_setting_names_are_every_setting_that_changes_the_loss():
    hyperparameters = {name for info in LOSS_MODES.values() for name in info.hyperparameters}
    assert set(LOSS_SETTING_NAMES) == hyperparameters | {"partial_loss_mode", "prior_path", "loss_reduction"}
    assert len(LOSS_SETTING_NAMES) == len(set(LOSS_SETTING_NAMES)) == 9 + 26 + 3  # CSL, peers, the three
    assert list(LOSS_HYPERPARAMETERS) == [name for name in LOSS_SETTING_NAMES if name in hyperparameters]
    options = {option for action in build_train_parser()._actions for option in action.option_strings}
    assert all(f"--{name}" in options for name in LOSS_SETTING_NAMES)


def test_peer_labels_are_the_table_labels():
    assert set(PEER_LABELS) == set(PEER_MODES)
    assert (PEER_LABELS["ll_r"], PEER_LABELS["em_apl"], PEER_LABELS["gr"]) == (
        "LL-R (Kim et al. 2022)", "EM-APL (Zhou et al. 2022)", "GR-Loss (Chen et al. 2024)")
    labels = [info.label for info in LOSS_MODES.values()]
    assert all(labels) and len(set(labels)) == len(labels)


@pytest.mark.parametrize(("parse", "text", "message"), [
    (positive_int, "0", "must be an integer >= 1, got 0"),
    (positive_int, "2.5", "'2.5' is not an integer; must be an integer >= 1"),
    (non_negative_int, "-1", "must be >= 0, got -1"),
    (fraction, "1", r"must be a fraction in \(0, 1\), got 1"),
    (positive_float, "inf", "must be > 0, got inf"),
    (positive_float, "nan", "must be > 0, got nan"),
    (decay, "1.0", r"must be in \[0, 1\), got 1.0"),
    (probability, "-0.1", r"must be a probability in \[0, 1\], got -0.1"),
])
def test_range_types_name_their_bound(parse, text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        parse(text)


def test_range_types_accept_their_edges():
    assert (positive_int("1"), non_negative_int("0"), fraction("0.5")) == (1, 0, 0.5)
    assert positive_float("1e-9") == 1e-9
    assert (decay("0"), probability("0"), probability("1")) == (0.0, 0.0, 1.0)


@pytest.mark.parametrize(("text", "none"), [("none", True), ("None", True), (" NONE ", True), ("", True),
                                            (None, True), ("none.csv", False), ("./prior.csv", False)])
def test_none_paths(text, none):
    assert is_none_path(text) is none
    if text is not None:
        assert optional_path(text) == (None if none else text)


def test_the_loss_package_imports_only_what_it_needs():
    """Statically: every import of src/loss_functions is the standard library, torch, numpy, the package
    itself, the prior's CSV reader / accumulator, or the small src.utils modules."""
    allowed_src = ("src.loss_functions", "src.prior.csv_format", "src.prior.accumulator", "src.utils.values",
                   "src.utils.distributed")
    for path in LOSS_PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            for name in names:
                top = name.split(".")[0]
                assert top in sys.stdlib_module_names or top in ("torch", "numpy", "__future__") or (
                    name.startswith(allowed_src)), f"{path.name} imports {name}"


# --------------------------------------------------------------------------- faithfulness
@pytest.mark.parametrize("mode", ["an_ls", "epr", "hill", "splc", "ll_r", "ll_ct", "em", "gr"])
@pytest.mark.parametrize("epoch", [1, 2, 3, 7, 12])
@pytest.mark.parametrize("negatives", [False, True])
def test_value_and_gradient_equal_the_official_code(mode, epoch, negatives):
    """Targets of 1 and -1 only (the official setting), then with known negatives (our adaptation)."""
    shape = (16, 40) if mode.startswith("ll_") else (6, 9)  # LL: k grows over the epochs (4 .. 29)
    logits, targets = random_batch(seed=10 * epoch + negatives, batch=shape[0], classes=shape[1],
                                   negatives=negatives)
    loss_fn = create_loss(mode, reduction=OFFICIAL_REDUCTION[mode])
    ours = value_and_grad(loss_fn, logits, targets, epoch=epoch, num_epochs=12)
    # LL's selection is compared in float32, as their code runs; the others in float64.
    dtype = torch.float32 if mode.startswith("ll_") else torch.float64
    expected = value_and_grad(lambda x, y: official(mode, x, y, epoch, 12), logits, targets, dtype)
    assert_matches(ours, expected)


@pytest.mark.parametrize("mode", ["an_ls", "epr", "hill", "splc", "ll_r", "ll_ct", "em", "gr"])
def test_sum_is_batch_times_classes_times_mean(mode):
    logits, targets = random_batch(seed=5, batch=16, classes=40, negatives=True)
    dtype = torch.float32 if mode.startswith("ll_") else torch.float64
    expected = value_and_grad(lambda x, y: official(mode, x, y, 4, 12), logits, targets, dtype)
    scale = {"sum": 1.0, "mean": 1 / logits.numel()} if OFFICIAL_REDUCTION[mode] == "sum" else \
        {"sum": float(logits.numel()), "mean": 1.0}
    for reduction in ("sum", "mean"):
        ours = value_and_grad(create_loss(mode, reduction=reduction), logits, targets, epoch=4, num_epochs=12)
        assert_matches(ours, expected, scale[reduction])


def test_splc_relabels_confident_unannotated_entries_without_the_margin():
    # p = 0.7 > 0.6 un-annotated: a negative focal term in epoch 1, a positive one (no margin) from 2.
    x = math.log(0.7 / 0.3)
    loss_fn = create_loss("splc")
    logits, targets = torch.tensor([[x]]), torch.tensor([[-1.0]])
    assert loss_fn(logits, targets, epoch=1).item() == pytest.approx(-(0.7**2) * math.log(0.3), rel=1e-5)
    assert loss_fn(logits, targets, epoch=2).item() == pytest.approx(-(0.3**2) * math.log(0.7), rel=1e-5)
    # A positive at the same logit gets the margin: p_m = sigmoid(x - 1).
    p_m = 1 / (1 + math.exp(-(x - 1)))
    value = loss_fn(logits, torch.tensor([[1.0]]), epoch=2).item()
    assert value == pytest.approx(-((1 - p_m) ** 2) * math.log(p_m), rel=1e-5)


def test_hill_and_splc_focusing_weights_carry_gradient():
    # Hill on one un-annotated entry: d/dx (1.5 - p) p^2 = (3p - 3p^2) p (1 - p); at p = 0.5: 0.1875.
    leaf = torch.zeros(1, 1, requires_grad=True)
    create_loss("hill")(leaf, torch.tensor([[-1.0]])).backward()
    assert leaf.grad.item() == pytest.approx((3 * 0.5 - 3 * 0.25) * 0.25, rel=1e-6)
    # SPLC epoch 1 un-annotated, p = 0.5: d/dx [-p^2 log(1 - p)] = -2p^2 (1 - p) log(1 - p) + p^3
    # = 0.125 (1 + 2 log 2).
    leaf = torch.zeros(1, 1, requires_grad=True)
    create_loss("splc")(leaf, torch.tensor([[-1.0]]), epoch=1).backward()
    assert leaf.grad.item() == pytest.approx(0.125 * (1 + 2 * math.log(2)), rel=1e-6)


def test_gr_schedule_hand_computed():
    loss_fn = create_loss("gr")
    # w, b use (e - 1) / T; mu, sigma use e / T (their train.py, linear_init 0).
    assert loss_fn.schedule(1, 10) == pytest.approx({"w": 0.0, "b": -2.0, "mu": 0.53, "sigma": 1.85})
    assert loss_fn.schedule(10, 10) == pytest.approx({"w": 1.8, "b": -2.0, "mu": 0.8, "sigma": 0.5})
    # One un-annotated entry at p = 0.5, epoch 1 of 10: K = sigmoid(-2), V = exp(-0.5 (0.03 / 1.85)^2).
    k, v = 1 / (1 + math.exp(2)), math.exp(-0.5 * (0.03 / 1.85) ** 2)
    expected = v * (k * (1 - 0.5**0.01) / 0.01 + (1 - k) * 0.5)
    value = loss_fn(torch.zeros(1, 1), torch.tensor([[-1.0]]), epoch=1, num_epochs=10).item()
    assert value == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(("mode", "entries", "epoch", "expected_k"), [
    ("ll_r", 1280, 1, 0), ("ll_r", 1280, 2, 7), ("ll_r", 1280, 3, 13), ("ll_ct", 1280, 2, 3),
    ("ll_ct", 1280, 5, 11), ("ll_cp", 1280, 1, 0), ("ll_cp", 1280, 2, 2), ("ll_cp", 1280, 9, 2),
    ("ll_r", 200, 2, 2)])
def test_large_loss_k_hand_computed(mode, entries, epoch, expected_k):
    # B C = 16 x 80 = 1280: ll_r ceil(1280 * 0.005 (e - 1)) = 7, 13; ll_ct ceil(1280 * 0.002 (e - 1))
    # = 3, 11; ll_cp ceil(1280 * 0.001) = 2 from epoch 2 on. Their running clean rate 1 - 0.005 leaves
    # 1 - clean_rate = 0.0050000000000000044, so 200 entries give ceil(1.0000000000000009) = 2, not 1.
    store = dict(num_samples=1, num_classes=1) if mode == "ll_cp" else {}
    assert create_loss(mode, **store).num_selected(entries, epoch) == expected_k


def test_ll_r_rejected_entries_count_in_the_mean():
    # One positive (p 0.5) and two un-annotated entries; epoch 2, ll_r_delta 0.3: k = ceil(0.9) = 1
    # rejects the larger un-annotated loss (p 0.9); the mean still divides by 3.
    logits = torch.tensor([[0.0, math.log(9), math.log(0.25)]])
    targets = torch.tensor([[1.0, -1.0, -1.0]])
    value = create_loss("ll_r", ll_r_delta=0.3, reduction="mean")(logits, targets, epoch=2).item()
    assert value == pytest.approx((math.log(2) + -math.log(0.8)) / 3, rel=1e-6)


# --------------------------------------------------------------------------- label stores
def test_ll_cp_flips_permanently_as_boostlu_does():
    """Three epochs of batches over 12 images: each batch's loss and gradient, and the flips kept,
    equal BoostLU's LL-Cp (their label matrix set to 1 at the chosen entries after each batch)."""
    num_samples, classes, delta = 12, 40, 0.02  # k = ceil(4 * 40 * 0.02) = 4 per batch from epoch 2
    generator = torch.Generator().manual_seed(3)
    original = torch.where(torch.rand(num_samples, classes, generator=generator) < 0.2, 1.0, -1.0)
    original[torch.rand(num_samples, classes, generator=generator) < 0.1] = 0.0
    observed = original.clone()  # their dataset's label_matrix_obs
    loss_fn = create_loss("ll_cp", num_samples=num_samples, num_classes=classes, ll_cp_delta=delta,
                          reduction="mean")
    for epoch in (1, 2, 3):
        for batch in torch.randperm(num_samples, generator=generator).split(4):
            logits = torch.randn(len(batch), classes, generator=generator) * 2
            _, chosen = official_large_loss(logits, observed[batch], "ll_cp", epoch, delta)
            ref = value_and_grad(lambda x, y, e=epoch: official_large_loss(x, y, "ll_cp", e, delta)[0],
                                 logits, observed[batch])
            ours = value_and_grad(loss_fn, logits, original[batch], epoch=epoch, indices=batch)
            assert_matches(ours, ref)
            if chosen is not None:
                rows, columns = chosen.nonzero(as_tuple=True)
                observed[batch[rows], columns] = 1.0
    flipped = (observed == 1) & (original == -1)
    assert int(flipped.sum()) == 2 * 3 * 4  # epochs 2 and 3, three batches each, k = 4
    torch.testing.assert_close(loss_fn.flipped_to_positive, flipped.to(torch.int8))


def official_apl_pass(observed, known_negative, scores, unlabel_num, num_epochs, warmup=5, share=0.9):
    """SPML-AckTheUnknown main.py aysmmetric_pseudo_labeling: per class, the int(share U_c / (T - w))
    unknown entries with the lowest prediction get -prediction (rounded to float16, our store's type)."""
    for c in range(observed.shape[1]):
        unlabelled = np.where((observed[:, c] == 0) & ~known_negative[:, c])[0]
        count = int(share * unlabel_num[c] / (num_epochs - warmup))
        for location in np.argsort(scores[unlabelled, c])[:count]:
            row = unlabelled[location]
            observed[row, c] = -float(np.float16(scores[row, c]))


def test_em_apl_pseudo_labels_and_loss_follow_their_main_py():
    num_samples, classes, num_epochs = 40, 6, 8  # passes after epochs 5, 6, 7: int(0.9 U_c / 3) each
    rng = np.random.default_rng(4)
    original = np.where(rng.random((num_samples, classes)) < 0.2, 1.0, -1.0)
    original[rng.random((num_samples, classes)) < 0.15] = 0.0
    known_negative = original == 0
    observed = np.where(original == 1, 1.0, 0.0)  # their encoding: 1 positive, 0 unknown, -s pseudo
    unlabel_num = (original == -1).sum(0)
    loss_fn = create_loss("em_apl", num_samples=num_samples, num_classes=classes, reduction="mean")
    targets = torch.tensor(original, dtype=torch.float32)
    for epoch in range(1, num_epochs + 1):
        batch = torch.arange(10 * (epoch % 4), 10 * (epoch % 4) + 10)
        logits = torch.tensor(rng.normal(size=(10, classes)) * 2, dtype=torch.float32)
        ours = value_and_grad(loss_fn, logits, targets[batch], epoch=epoch, num_epochs=num_epochs,
                              indices=batch)
        obs = torch.tensor(observed[batch.numpy()])
        ref = value_and_grad(lambda x, y, o=obs, n=torch.tensor(known_negative[batch.numpy()]):
                             official_em_apl(x, o, n), logits, targets[batch], torch.float64)
        assert_matches(ours, ref)
        scores = rng.random((num_samples, classes)).astype(np.float32)
        labelled = loss_fn.update_from_training_pass(torch.tensor(scores), targets, epoch, num_epochs)
        assert (labelled > 0) == (5 <= epoch < num_epochs)  # their pass after the last epoch is skipped
        if 5 <= epoch < num_epochs:
            official_apl_pass(observed, known_negative, scores, unlabel_num, num_epochs)
    store = loss_fn.soft_negatives.double()
    expected = torch.tensor(np.where(observed < 0, -observed, np.nan))
    torch.testing.assert_close(store, expected, equal_nan=True)
    assert not bool((~torch.isnan(store) & torch.tensor(original != -1)).any())  # un-annotated only


def test_em_apl_training_pass_contract():
    loss_fn = create_loss("em_apl", num_samples=4, num_classes=2)
    assert [loss_fn.wants_training_pass(e, 10) for e in (1, 4, 5, 9, 10)] == [False, False, True, True, False]
    assert not loss_fn.wants_training_pass(5, 5)  # no later epoch, and their count divides by T - 5
    targets = -torch.ones(4, 2)
    assert loss_fn.update_from_training_pass(torch.full((4, 2), 0.3), targets, 4, 10) == 0
    assert bool(torch.isnan(loss_fn.soft_negatives.float()).all())
    with pytest.raises(ValueError, match=r"\(N, C\) = \(4, 2\) in dataset order"):
        loss_fn.update_from_training_pass(torch.zeros(3, 2), targets, 5, 10)
    with pytest.raises(ValueError, match="probabilities"):
        loss_fn.update_from_training_pass(torch.full((4, 2), 2.0), targets, 5, 10)
    # T = 7: int(0.9 * 4 / 2) = 1 entry per class, the lowest score.
    scores = torch.tensor([[0.5, 0.2], [0.1, 0.9], [0.3, 0.05], [0.7, 0.6]])
    assert loss_fn.update_from_training_pass(scores, targets, 5, 7) == 2
    expected = torch.full((4, 2), float("nan"))
    expected[1, 0], expected[2, 1] = 0.1, 0.05
    torch.testing.assert_close(loss_fn.soft_negatives.float(), expected.half().float(), equal_nan=True)


@pytest.mark.parametrize("mode", STORE_MODES)
def test_store_is_saved_and_restored_with_the_state_dict(mode, tmp_path):
    loss_fn = create_loss(mode, num_samples=10, num_classes=40, **({"ll_cp_delta": 0.05} if mode == "ll_cp"
                                                                    else {}))
    logits, targets = random_batch(seed=8, batch=10, classes=40)
    if mode == "ll_cp":
        loss_fn(logits, targets, epoch=2, indices=torch.arange(10))
    else:
        loss_fn.update_from_training_pass(torch.sigmoid(logits), targets, 5, 10)
    name, dtype = ("flipped_to_positive", torch.int8) if mode == "ll_cp" else \
        ("soft_negatives", torch.float16)
    state = loss_fn.state_dict()
    assert state[name].dtype == dtype and tuple(state[name].shape) == (10, 40)
    changed = int((state[name] == 1).sum()) if mode == "ll_cp" else int((~torch.isnan(state[name])).sum())
    per_class = [int(0.9 * int((targets[:, c] == -1).sum()) / 5) for c in range(40)]
    assert changed == (20 if mode == "ll_cp" else sum(per_class))  # ceil(400 * 0.05); int(0.9 U_c / 5)
    torch.save({"criterion": state}, tmp_path / "checkpoint.pth")
    restored = create_loss(mode, num_samples=10, num_classes=40)
    restored.load_state_dict(torch.load(tmp_path / "checkpoint.pth")["criterion"])
    torch.testing.assert_close(getattr(restored, name), getattr(loss_fn, name), equal_nan=True, rtol=0,
                               atol=0)


def test_store_larger_than_half_the_memory_is_refused(monkeypatch):
    with pytest.raises(MemoryError, match=r"N=1000000000 images x C=1000000 classes .* needs "
                                          r"1000000000000000 bytes"):
        create_loss("ll_cp", num_samples=10**9, num_classes=10**6)
    monkeypatch.setattr(label_store_module, "physical_memory_bytes", lambda: 7000)
    create_loss("ll_cp", num_samples=100, num_classes=35)  # 3,500 bytes: exactly half, accepted
    with pytest.raises(MemoryError, match=r"'em_apl'.*N=100 images x C=35 classes \(torch.float16\) needs "
                                          r"7000 bytes .*3500 of 7000"):
        create_loss("em_apl", num_samples=100, num_classes=35)


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """One gloo rank: an LL-Cp batch of its own images, then EM-APL's pass on the common scores."""
    import datetime

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        ll_cp = create_loss("ll_cp", num_samples=8, num_classes=5, ll_cp_delta=0.2)
        logits, targets = ddp_rank_batch(rank)
        ll_cp(logits, targets, epoch=2, indices=torch.tensor([2 * rank, 2 * rank + 5]))
        em_apl = create_loss("em_apl", num_samples=8, num_classes=5)
        scores, all_targets = ddp_pass_inputs()
        labelled = em_apl.update_from_training_pass(scores, all_targets, 5, 7)
        torch.save({"ll_cp": ll_cp.flipped_to_positive, "em_apl": em_apl.soft_negatives,
                    "labelled": labelled}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def ddp_rank_batch(rank: int):
    generator = torch.Generator().manual_seed(100 + rank)
    logits = torch.randn(2, 5, generator=generator) * 2
    return logits, torch.where(torch.rand(2, 5, generator=generator) < 0.3, 1.0, -1.0)


def ddp_pass_inputs():
    generator = torch.Generator().manual_seed(7)
    targets = torch.where(torch.rand(8, 5, generator=generator) < 0.25, 1.0, -1.0)
    return torch.rand(8, 5, generator=generator), targets


@pytest.mark.slow
def test_stores_stay_identical_on_two_gloo_ranks(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Rank 1 in a spawned process, rank 0 here (as tests/test_prior.py does).
    worker = mp.get_context("spawn").Process(target=_ddp_worker, args=(1, 2, port, str(tmp_path)))
    worker.start()
    try:
        _ddp_worker(0, 2, port, str(tmp_path))
    finally:
        worker.join(timeout=120)
    assert worker.exitcode == 0
    results = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    # LL-Cp: each rank flipped k = ceil(2 * 5 * 0.2) = 2 entries of its own images; both stores hold all 4.
    expected = torch.zeros(8, 5, dtype=torch.int8)
    for rank in range(2):
        logits, targets = ddp_rank_batch(rank)
        _, chosen = official_large_loss(logits, targets, "ll_cp", 2, 0.2)
        rows, columns = chosen.nonzero(as_tuple=True)
        expected[torch.tensor([2 * rank, 2 * rank + 5])[rows], columns] = 1
    assert int(expected.sum()) == 4
    # EM-APL: the pass over the same scores, split between the ranks and gathered, equals their main.py's.
    scores, targets = ddp_pass_inputs()
    observed = np.where(targets.numpy() == 1, 1.0, 0.0)
    official_apl_pass(observed, np.zeros((8, 5), bool), scores.numpy(), (targets.numpy() == -1).sum(0), 7)
    pseudo = torch.tensor(np.where(observed < 0, -observed, np.nan))
    for result in results:
        torch.testing.assert_close(result["ll_cp"], expected, rtol=0, atol=0)
        torch.testing.assert_close(result["em_apl"].double(), pseudo, equal_nan=True)
        assert result["labelled"] == int((observed < 0).sum()) > 0


# --------------------------------------------------------------------------- known negatives, CSL, errors
@pytest.mark.parametrize("mode", PEER_MODES)
@pytest.mark.parametrize("epoch", [1, 6])
def test_known_negative_gets_minus_log_one_minus_p(mode, epoch):
    store = dict(num_samples=1, num_classes=1) if mode in STORE_MODES else {}
    loss_fn = create_loss(mode, **store)
    leaf = torch.tensor([[math.log(0.25 / 0.75)]], requires_grad=True)  # p = 0.25
    value = loss_fn(leaf, torch.tensor([[0.0]]), epoch=epoch, num_epochs=10, indices=torch.tensor([0]))
    value.backward()
    expected, gradient = -math.log(0.75), 0.25  # d/dx -log(1 - p) = p
    if mode == "epr":  # plus its regulariser (p - 2.9)^2 / 1^2
        expected += (0.25 - 2.9) ** 2
        gradient += 2 * (0.25 - 2.9) * 0.25 * 0.75
    assert value.item() == pytest.approx(expected, rel=1e-5)
    assert leaf.grad.item() == pytest.approx(gradient, rel=1e-5)


def test_csl_modes_through_create_loss():
    # p 0.8 positive, 0.25 negative, 0.5 un-annotated; default focusing gamma_neg 1, gamma_unann 2.
    logits = torch.tensor([[math.log(4), math.log(1 / 3), 0.0]])
    targets = torch.tensor([[1.0, 0.0, -1.0]])
    expected = -(math.log(0.8) + 0.25 * math.log(0.75) + 0.25 * math.log(0.5))
    loss_fn = create_loss("negative")
    assert type(loss_fn) is PartialSelectiveLoss and loss_fn.partial_loss_mode == "negative"
    assert loss_fn(logits, targets, epoch=3, num_epochs=9, indices=torch.tensor([4])).item() == \
        pytest.approx(expected, rel=1e-6)
    mean = create_loss("negative", reduction="mean")(logits, targets, epoch=3, indices=torch.tensor([4]))
    assert mean.item() == pytest.approx(expected / 3, rel=1e-6)
    # selective with a prior above the threshold on class 2: its un-annotated entry is ignored.
    selective = create_loss("selective", prior=torch.tensor([0.01, 0.01, 0.5]), likelihood_topk=0)
    assert selective(logits, targets, epoch=1).item() == pytest.approx(
        -(math.log(0.8) + 0.25 * math.log(0.75)), rel=1e-6)


def test_bad_modes_keywords_and_calls_are_clear_errors():
    with pytest.raises(ValueError, match="'hil' is not supported; choose one of .*'hill'"):
        create_loss("hil")
    with pytest.raises(TypeError, match=r"create_loss\('hill'\) got unknown keyword\(s\) \['hill_lamda'\]"):
        create_loss("hill", hill_lamda=1.0)
    with pytest.raises(TypeError, match=r"\['ll_r_delta'\]"):
        create_loss("ll_ct", ll_r_delta=0.1)
    with pytest.raises(ValueError, match="'ll_cp' keeps a per-sample label store: pass num_samples=N"):
        create_loss("ll_cp")
    with pytest.raises(ValueError, match="reduction must be one of"):
        create_loss("gr", reduction="average")
    logits, targets = random_batch(seed=2)
    with pytest.raises(ValueError, match="'splc' follows an epoch schedule: call it with epoch=e"):
        create_loss("splc")(logits, targets)
    with pytest.raises(ValueError, match="'gr' needs num_epochs=T"):
        create_loss("gr")(logits, targets, epoch=2)
    with pytest.raises(ValueError, match="'em_apl' keeps a per-sample label store: call it with indices="):
        create_loss("em_apl", num_samples=6, num_classes=9)(logits, targets, epoch=1)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 6\)"):
        create_loss("ll_cp", num_samples=6, num_classes=9)(logits, targets, epoch=1,
                                                           indices=torch.arange(1, 7))
    for mode in STORE_MODES:  # logits of 9 classes, a store of 8
        with pytest.raises(ValueError, match="the store was built for 8 classes, the logits have 9"):
            create_loss(mode, num_samples=6, num_classes=8)(logits, targets, epoch=9, num_epochs=10,
                                                            indices=torch.arange(6))
    with pytest.raises(ValueError, match=r"1 \(positive\), 0 \(negative\) and -1"):
        create_loss("hill")(logits, targets * 2)
    with pytest.raises(ValueError, match="an_ls_smoothing must be in"):
        create_loss("an_ls", an_ls_smoothing=1.0)


def test_autocast_bfloat16_logits_give_the_float32_loss():
    logits, targets = random_batch(seed=6, negatives=True)
    loss_fn = create_loss("gr")
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        value = loss_fn(logits.bfloat16(), targets, epoch=2, num_epochs=5)
    assert value.dtype == torch.float32
    expected = official_gr(logits.bfloat16().double(), targets, 2, 5) * logits.numel()
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)


# --------------------------------------------------------------------------- build_criterion
# 4 images x 5 classes, hand-written (as in tests/test_data_labels.py).
DENSE = np.array([[1, 0, -1, -1, 0], [-1, -1, -1, -1, -1], [0, 1, 1, -1, 0], [1, -1, 0, 1, -1]], np.int8)
NAMES = ["a", "b", "c", "d", "e"]


def flags(mode: str, **values) -> argparse.Namespace:
    """train.py's loss flags at their flag defaults (the table), with ``values`` set."""
    settings = {name: entry.flag_default for name, entry in LOSS_HYPERPARAMETERS.items()}
    settings.update(partial_loss_mode=mode, loss_reduction="sum", prior_path=None)
    settings.update(values)
    return argparse.Namespace(**settings)


def test_expected_positives_hand_computed():
    # Per class: positives / annotated where the class has a known negative, else positives / images:
    # 2/3 + 1/2 + 1/2 + 1/4 + 0/2 = 23/12.
    assert expected_positives_per_image([2, 1, 1, 1, 0], [1, 1, 1, 0, 2], 4) == pytest.approx(23 / 12)
    # Complete labels: exactly the mean number of positives per image (3 positives over 3 images).
    assert expected_positives_per_image([2, 1], [1, 2], 3) == pytest.approx(1.0)


def test_build_criterion_builds_every_peer_mode_from_the_flags():
    labels = LabelMatrix.from_dense(DENSE)
    criterion = build_criterion(flags("epr", simulate_partial_type="rps"), NAMES, train_labels=labels)
    assert criterion.epr_expected_positives == pytest.approx(23 / 12)
    assert build_criterion(flags("epr", epr_expected_positives=1.5), NAMES).epr_expected_positives == 1.5
    criterion = build_criterion(flags("hill", hill_lambda=2.0, loss_reduction="mean"), NAMES)
    assert (criterion.hill_lambda, criterion.hill_margin, criterion.reduction) == (2.0, 1.0, "mean")
    criterion = build_criterion(flags("ll_cp", ll_cp_delta=0.01), NAMES, train_labels=labels)
    assert tuple(criterion.flipped_to_positive.shape) == (4, 5) and criterion.delta == 0.01
    criterion = build_criterion(flags("em_apl"), NAMES, num_samples=7)
    assert tuple(criterion.soft_negatives.shape) == (7, 5)
    for mode in PEER_MODES:
        built = build_criterion(flags(mode, simulate_partial_type="rps"), NAMES, train_labels=labels)
        assert built.mode == mode and built.reduction == "sum"
    # The CSL modes read the flags they always read and sum (a paper-style Namespace still builds them).
    csl = build_criterion(flags("negative", loss_reduction="mean", likelihood_topk=2), NAMES)
    assert type(csl) is PartialSelectiveLoss and csl.likelihood_topk == 2


def _bernoulli_labels(num_samples=4000, seed=123):
    """Complete labels whose classes have very different frequencies (rates 0.02 .. 0.6)."""
    rates = np.linspace(0.02, 0.6, 12)
    return (np.random.default_rng(seed).random((num_samples, rates.size)) < rates).astype(np.int8)


def test_epr_expected_positives_is_the_datas_constant_not_an_fpc_estimate():
    """Cole et al. give EPR the true mean number of positives per image. FPC keeps n positives and n
    negatives of every class, so positives / annotated is 0.5 for each class and the old estimate was C/2
    (24 on the embedded benchmark, where the true mean is 2.37): refused, naming the flag to pass."""
    full = _bernoulli_labels()
    true_mean = (full == 1).sum(1).mean()
    names = [f"c{i}" for i in range(full.shape[1])]
    fpc = simulate_partial_labels(full, "fpc", 50, seed=0)
    counts = LabelMatrix.from_dense(fpc)
    # What the estimator would say on FPC labels: every class 0.5, so C / 2, far from the truth.
    biased = expected_positives_per_image(counts.positive_counts(), counts.negative_counts(), len(fpc))
    assert biased == pytest.approx(full.shape[1] / 2) and abs(biased - true_mean) > 2
    with pytest.raises(ValueError, match=r"--simulate_partial_type fpc do not identify .*pass "
                                         r"--epr_expected_positives"):
        build_criterion(flags("epr", simulate_partial_type="fpc"), names, train_labels=counts)
    with pytest.raises(ValueError, match=r"--partial_labels labels.npz do not identify"):
        build_criterion(flags("epr", partial_labels="labels.npz"), names, train_labels=counts)
    # Given as the known constant, it is used as it is.
    known = flags("epr", simulate_partial_type="fpc", epr_expected_positives=float(true_mean))
    given = build_criterion(known, names, train_labels=counts)
    assert given.epr_expected_positives == pytest.approx(true_mean)
    # Labels missing at random (RPS) identify it: the estimate is within sampling error of the truth.
    rps = LabelMatrix.from_dense(simulate_partial_labels(full, "rps", 0.5, seed=0))
    estimate = build_criterion(flags("epr", simulate_partial_type="rps"), names, train_labels=rps)
    assert estimate.epr_expected_positives == pytest.approx(true_mean, rel=0.03)
    # Complete labels: exactly the mean.
    exact = build_criterion(flags("epr"), names, train_labels=LabelMatrix.from_dense(full))
    assert exact.epr_expected_positives == pytest.approx(true_mean)


def test_build_criterion_errors_name_what_is_missing():
    with pytest.raises(ValueError, match="pass train_labels to build_criterion, or set the value"):
        build_criterion(flags("epr"), NAMES)
    with pytest.raises(ValueError, match="ll_cp keeps a per-sample label store: pass num_samples"):
        build_criterion(flags("ll_cp"), NAMES)
    args = flags("gr")
    del args.gr_q3
    with pytest.raises(AttributeError, match=r"lacks the loss flag\(s\) \['gr_q3'\]"):
        build_criterion(args, NAMES)
    with pytest.raises(ValueError, match="--prior_path .* only used by --partial_loss_mode selective.*"
                                         "'hill'"):
        build_criterion(flags("hill", prior_path="prior.csv"), NAMES)
    with pytest.raises(ValueError, match="'nope' is not supported"):
        build_criterion(flags("nope"), NAMES)
