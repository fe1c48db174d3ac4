"""Multi-process training and evaluation on CPU (gloo), launched like a user would: torchrun.

The DDP run's per-epoch evaluation (sharded over 2 ranks, gathered) must give exactly the metrics a
single process computes from the saved weights, the prior statistics must count every training
image of every rank, and only rank 0 may write outputs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

import train
from src.utils.distributed import ShardSampler, shard_bounds
from tests.conftest import SINGLE_THREAD_ENV, tiny_train_argv

pytestmark = [pytest.mark.usefixtures("torch_single_thread"), pytest.mark.slow]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("num_samples", [0, 1, 5, 47, 48, 100])
@pytest.mark.parametrize("world_size", [1, 2, 3, 8])
@pytest.mark.parametrize("batch_size", [1, 5, 16])
def test_eval_shards_partition_the_dataset_at_batch_boundaries(num_samples, world_size, batch_size):
    covered = []
    for rank in range(world_size):
        start, stop = shard_bounds(num_samples, rank, world_size, batch_size)
        assert start % batch_size == 0 or start == num_samples
        sampler = ShardSampler(num_samples, rank=rank, world_size=world_size, batch_size=batch_size)
        assert list(sampler) == list(range(start, stop)) and len(sampler) == stop - start
        covered.extend(sampler)
    assert covered == list(range(num_samples))  # in order, no duplicate, nothing missing
    batches = -(-num_samples // batch_size)
    sizes = [len(ShardSampler(num_samples, r, world_size, batch_size)) for r in range(world_size)]
    assert max(sizes) - min(sizes) <= batch_size * (1 if batches >= world_size else batches)


def _torchrun_train(argv: list[str]) -> str:
    env = dict(os.environ, **SINGLE_THREAD_ENV)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "train.py", *argv]
    completed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return completed.stdout


@pytest.fixture(scope="module")
def ddp_run(embedded_data_dir, tmp_path_factory):
    dest = tmp_path_factory.mktemp("ddp")
    argv = tiny_train_argv(embedded_data_dir, dest, "--partial_loss_mode", "ignore",
                           "--estimate_prior", "both")
    return str(dest), _torchrun_train(argv)


def test_ddp_outputs_are_written_once(ddp_run):
    dest, stdout = ddp_run
    with open(os.path.join(dest, "args.json"), encoding="utf-8") as handle:
        config = json.load(handle)
    assert config["world_size"] == 2 and config["steps_per_epoch"] == 3  # 96 images / 2 ranks / batch 16
    with open(os.path.join(dest, "metrics.jsonl"), encoding="utf-8") as handle:
        assert len(handle.readlines()) == 1
    assert stdout.count("epoch 1/1: loss") == 1  # rank 0 prints, rank 1 does not
    assert stdout.count("Simulated partial labels") == 1  # both ranks simulate, one reports


def test_ddp_evaluation_equals_single_process(ddp_run, embedded_data_dir):
    from src.data import build_datasets
    from src.engine import build_eval_loader, evaluate

    dest, _ = ddp_run
    checkpoint = torch.load(os.path.join(dest, "last.pth"), map_location="cpu", weights_only=True)
    args = train.parse_args(tiny_train_argv(embedded_data_dir, "unused"))
    _, val_set = build_datasets(args)
    model = train.build_model(args, _single_process_context())
    with open(os.path.join(dest, "metrics.jsonl"), encoding="utf-8") as handle:
        logged = json.loads(handle.readline())
    results = {}  # one torch thread (torch_single_thread) as the ranks: same kernels, same rounding
    for variant, state in (("regular", checkpoint["model"]), ("ema", checkpoint["ema"])):
        model.load_state_dict(state)
        results[variant] = evaluate(model, build_eval_loader(val_set, 16, 0), "cpu")
    for variant, result in results.items():
        for key in ("mAP", "CF1", "OF1", "CP", "OR"):
            assert result[key] == logged[f"test_{variant}_{key}"], (variant, key)  # exact, not approx


def test_ddp_priors_count_every_rank(ddp_run, embedded_data_dir):
    from src.data import build_datasets, eval_view
    from src.data.transforms import build_val_transform
    from src.engine import compute_prior_from_model

    dest, _ = ddp_run
    last = torch.load(os.path.join(dest, "last.pth"), map_location="cpu", weights_only=True)
    assert last["train_prior"]["count"] == 96  # 48 images per rank, summed over both ranks
    running = pd.read_csv(os.path.join(dest, "priors", "prior_fpc_10_running_average.csv"))
    np.testing.assert_allclose(running["avg_pred"], last["train_prior"]["sums"].numpy() / 96, atol=1e-7)

    args = train.parse_args(tiny_train_argv(embedded_data_dir, "unused"))
    train_set, _ = build_datasets(args)
    model = train.build_model(args, _single_process_context())
    best = torch.load(os.path.join(dest, "best.pth"), map_location="cpu", weights_only=True)
    model.load_state_dict(best["model"])
    expected = compute_prior_from_model(model, eval_view(train_set, build_val_transform(32)), "cpu", 16)
    clean = pd.read_csv(os.path.join(dest, "priors", "prior_fpc_10.csv"))
    np.testing.assert_allclose(clean["avg_pred"], expected, rtol=0, atol=1e-6)


def _single_process_context():
    from src.utils.distributed import DistributedContext

    return DistributedContext(device=torch.device("cpu"))


def _training_targets(embedded_data_dir) -> np.ndarray:
    """The run's partial training labels, rebuilt the way train.py builds them (same simulation seed)."""
    from src.data import build_datasets

    train_set, _ = build_datasets(train.parse_args(tiny_train_argv(embedded_data_dir, "unused")))
    labels = train_set.labels
    return np.asarray(labels.to_dense() if hasattr(labels, "to_dense") else labels)


@pytest.mark.parametrize("mode", ["ll_cp", "em_apl"])
def test_ddp_label_stores_hold_every_ranks_updates(mode, embedded_data_dir, tmp_path):
    """The per-sample stores under torchrun: rank 0's checkpoint holds the updates of both ranks.

    LL-Cp flips ceil(B C delta) = 1 entry (16 x 48 x 0.001 = 0.77) per rank per step from epoch 2: 2 epochs x
    3 steps x 2 ranks = 12 flips (6 if rank 1's were lost). EM-APL (warm-up 1, T = 3) labels
    int(0.9 U_c / 2) new entries of class c after epochs 1 and 2, from the whole training set's scores."""
    own = ["--apl_warmup_epochs", "1"] if mode == "em_apl" else []  # a flag only for the mode that has it
    stdout = _torchrun_train(tiny_train_argv(embedded_data_dir, tmp_path, "--epochs", "3",
                                             "--partial_loss_mode", mode, *own))
    store = torch.load(tmp_path / "last.pth", map_location="cpu", weights_only=True)["criterion"]
    targets = _training_targets(embedded_data_dir)
    unannotated = targets == -1
    if mode == "ll_cp":
        flipped = store["flipped_to_positive"].numpy() == 1
        assert int(flipped.sum()) == 12
        assert not (flipped & ~unannotated).any()  # only un-annotated entries are flipped
        return
    soft = store["soft_negatives"].float().numpy()
    labelled = ~np.isnan(soft)
    per_class = np.floor(0.9 * unannotated.sum(0) / 2).astype(int)
    np.testing.assert_array_equal(labelled.sum(0), np.minimum(2 * per_class, unannotated.sum(0)))
    assert not (labelled & ~unannotated).any()
    assert ((soft[labelled] >= 0) & (soft[labelled] <= 1)).all()
    counts = [int(line.split("training images: ")[1].split()[0]) for line in stdout.splitlines()
              if "pseudo-labelling pass" in line]
    assert counts == [int(per_class.sum())] * 2  # printed once (rank 0), after epochs 1 and 2
