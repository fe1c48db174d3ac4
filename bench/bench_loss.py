"""Benchmark the losses (forward + backward): PartialSelectiveLoss against a straightforward formulation,
and every loss mode of `create_loss` against our ``negative`` mode.

The reference computes the three masked log terms separately and finds the selective mode's
top-k un-annotated entries with a full argsort of every un-annotated probability in the batch
(as the paper's code does). Both are run on the same inputs at COCO scale (64 x 80, half the
entries un-annotated) and at OpenImages scale (128 x 9,605, ~99% un-annotated, with a prior); the
script asserts equal losses and gradients and prints the best time of each and their ratio.

The second table times every mode of `src.loss_functions.LOSS_MODES` (official defaults, reduction
'sum') at OpenImages scale, in epoch 10 of 30 (LL-R / LL-Ct then reject or flip 4.5% / 1.8% of the
entries; EM-APL's store holds one labelling pass), as a ratio to the ``negative`` mode; the goal is
at most 2x.

    .venv/bin/python bench/bench_loss.py [--repeats N] [--threads T]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.loss_functions import LOSS_MODES, PartialSelectiveLoss, create_loss  # noqa: E402

SCALES = (
    # name, batch, classes, fraction of un-annotated entries
    ("coco", 64, 80, 0.5),
    ("openimages", 128, 9605, 0.99),
)
LOSS_SETTINGS = dict(clip=0.0, gamma_pos=0.0, gamma_neg=1.0, gamma_unann=4.0, alpha_pos=1.0, alpha_neg=1.0,
                     alpha_unann=1.0, likelihood_topk=5, prior_threshold=0.05)
CASES = (  # label, partial_loss_mode, uses the prior
    ("negative", "negative", False),
    ("ignore", "ignore", False),
    ("ignore_normalize_classes", "ignore_normalize_classes", False),
    ("selective", "selective", False),
    ("selective+prior", "selective", True),
)


def reference_loss(logits, targets, mode, prior=None, clip=0.0, gamma_pos=0.0, gamma_neg=1.0,
                   gamma_unann=4.0, alpha_pos=1.0, alpha_neg=1.0, alpha_unann=1.0, likelihood_topk=5,
                   prior_threshold=0.05):
    """The loss written term by term, with a full argsort for the selective top-k."""
    pos, neg, unann = (targets == 1).float(), (targets == 0).float(), (targets == -1).float()
    p = torch.sigmoid(logits)
    q = 1 - p
    if clip > 0:
        q = (q + clip).clamp(max=1)
    bce = (alpha_pos * pos * torch.log(p.clamp(min=1e-8)) + alpha_neg * neg * torch.log(q.clamp(min=1e-8))
           + alpha_unann * unann * torch.log(q.clamp(min=1e-8)))
    with torch.no_grad():
        gamma = gamma_pos * pos + gamma_neg * neg + gamma_unann * unann
        focusing = torch.pow(1 - p * pos - q * (neg + unann), gamma)
        weights = torch.ones_like(p)
        if mode in ("ignore", "ignore_normalize_classes"):
            weights[targets == -1] = 0
            if mode == "ignore_normalize_classes":
                weights *= 1 + 1 / (1 + (targets != -1).sum(dim=1, keepdim=True))
        elif mode == "selective":
            if prior is not None and prior_threshold:
                weights[:, prior > prior_threshold] = 0
                weights[targets != -1] = 1
            unann_index = torch.where(targets.flatten() == -1)[0]
            order = torch.argsort(p.flatten()[unann_index], descending=True)
            weights.view(-1)[unann_index[order[: int(likelihood_topk * p.shape[0])]]] = 0
    return -(bce * focusing * weights).sum()


def make_inputs(batch, classes, unann_fraction, seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, classes, generator=generator) * 2 - 1
    targets = (torch.rand(batch, classes, generator=generator) < 0.1).float()
    targets[torch.rand(batch, classes, generator=generator) < unann_fraction] = -1
    prior = torch.rand(classes, generator=generator) * 0.1  # about half the classes above 0.05
    return logits, targets, prior


def run_once(loss_fn, logits, targets):
    """Milliseconds of one loss + backward, with the loss and the gradient it produced."""
    leaf = logits.clone().requires_grad_(True)
    start = time.perf_counter()
    loss = loss_fn(leaf, targets)
    loss.backward()
    return (time.perf_counter() - start) * 1e3, loss.detach(), leaf.grad


def bench_case(scale, case, repeats):
    """Best-of-``repeats`` time of ours and of the reference, runs interleaved so that load from
    other processes hits both alike; asserts equal losses and gradients."""
    name, batch, classes, unann_fraction = scale
    label, mode, with_prior = case
    logits, targets, prior = make_inputs(batch, classes, unann_fraction)
    ref_prior = prior if with_prior else None
    ours = PartialSelectiveLoss(partial_loss_mode=mode, prior=ref_prior, **LOSS_SETTINGS)

    def reference(x, y):
        return reference_loss(x, y, mode, ref_prior, **LOSS_SETTINGS)

    ours_times, ref_times = [], []
    for attempt in range(repeats + 1):  # the first round warms up and is not counted
        ours_ms, ours_loss, ours_grad = run_once(ours, logits, targets)
        ref_ms, ref_loss, ref_grad = run_once(reference, logits, targets)
        if attempt:
            ours_times.append(ours_ms)
            ref_times.append(ref_ms)
    torch.testing.assert_close(ours_loss, ref_loss, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(ours_grad, ref_grad, rtol=1e-5, atol=1e-7)
    return {"scale": f"{name} {batch}x{classes}", "mode": label, "loss": float(ours_loss),
            "reference_ms": min(ref_times), "ours_ms": min(ours_times),
            "speedup": min(ref_times) / min(ours_times)}


PEER_EPOCH, PEER_NUM_EPOCHS = 10, 30


def build_mode(mode, logits, targets):
    """``mode`` at its official defaults; a store mode sized to the batch (EM-APL after one pass)."""
    if "num_samples" not in LOSS_MODES[mode].needs:
        return create_loss(mode)
    loss = create_loss(mode, num_samples=logits.shape[0], num_classes=logits.shape[1])
    if hasattr(loss, "update_from_training_pass"):
        loss.update_from_training_pass(torch.sigmoid(logits), targets, PEER_EPOCH - 1, PEER_NUM_EPOCHS)
    return loss


def bench_modes(repeats):
    """Best-of-``repeats`` forward+backward time of every mode at OpenImages scale, runs interleaved;
    rows with the ratio to the ``negative`` mode."""
    name, batch, classes, unann_fraction = SCALES[-1]
    logits, targets, _ = make_inputs(batch, classes, unann_fraction)
    keywords = dict(epoch=PEER_EPOCH, num_epochs=PEER_NUM_EPOCHS, indices=torch.arange(batch))
    losses = {mode: build_mode(mode, logits, targets) for mode in LOSS_MODES}
    times = {mode: [] for mode in losses}
    for attempt in range(repeats + 1):  # the first round warms up and is not counted
        for mode, loss_fn in losses.items():
            ms, loss, _ = run_once(lambda x, y, f=loss_fn: f(x, y, **keywords), logits, targets)
            if not torch.isfinite(loss):
                raise RuntimeError(f"mode {mode}: non-finite loss {loss}")
            if attempt:
                times[mode].append(ms)
    base = min(times["negative"])
    return [{"scale": f"{name} {batch}x{classes}", "mode": mode, "ms": min(t), "vs_negative": min(t) / base}
            for mode, t in times.items()]


def main(argv: list[str] | None = None) -> list[dict]:
    """Run every case and print the table; returns one dict per row. ``argv`` None means defaults."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per case (best reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args([] if argv is None else argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [bench_case(scale, case, args.repeats) for scale in SCALES for case in CASES]
    mode_rows = bench_modes(args.repeats)
    print(f"PartialSelectiveLoss forward+backward, best of {args.repeats} runs, "
          f"{torch.get_num_threads()} thread(s); values and gradients equal to the reference")
    print(f"{'scale':<22} {'mode':<26} {'reference ms':>12} {'ours ms':>9} {'speedup':>8}")
    for row in rows:
        print(f"{row['scale']:<22} {row['mode']:<26} {row['reference_ms']:>12.2f} {row['ours_ms']:>9.2f} "
              f"{row['speedup']:>7.2f}x")
    print(f"\nEvery loss mode (official defaults), epoch {PEER_EPOCH} of {PEER_NUM_EPOCHS}, "
          f"forward+backward, best of {args.repeats} runs; goal: at most 2x the negative mode")
    print(f"{'scale':<22} {'mode':<26} {'ms':>9} {'vs negative':>12}")
    for row in mode_rows:
        flag = "" if row["vs_negative"] <= 2 else "  > 2x"
        print(f"{row['scale']:<22} {row['mode']:<26} {row['ms']:>9.2f} {row['vs_negative']:>11.2f}x{flag}")
    return rows + mode_rows


if __name__ == "__main__":
    main(sys.argv[1:])
