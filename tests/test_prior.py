"""The prior (src.prior): rank statistics, the CSV format, the ComputePrior accumulator, the clean pass
(single process and two gloo ranks) and the command (python -m src.prior)."""

from __future__ import annotations

import copy
import glob
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import Dataset

import src.prior.ranking
from src.data import eval_view
from src.data.embedded import class_names
from src.data.labels import LabelMatrix
from src.engine import compute_prior_from_model
from src.prior import (
    PRIOR_CSV_COLUMNS,
    ComputePrior,
    average_ranks,
    naive_estimates,
    rank_report,
    rank_statistics,
    read_prior_csv,
    spearman,
    write_prior_csv,
)


def logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


# --------------------------------------------------------------------------- rank statistics
def test_average_ranks_hand_example():
    np.testing.assert_allclose(average_ranks([10, 20, 20, 5, 20]), [2, 4, 4, 1, 4])


@pytest.mark.parametrize("seed", range(5))
def test_spearman_matches_scipy_with_ties(seed):
    from scipy.stats import spearmanr  # imported here: the DDP test's spawned workers re-import this module

    rng = np.random.default_rng(seed)
    a = rng.integers(0, 6, size=40)  # few distinct values -> many ties
    b = a + rng.integers(-3, 4, size=40)
    assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)
    c = rng.random(40)
    assert spearman(c, b) == pytest.approx(spearmanr(c, b).statistic, abs=1e-12)


def test_spearman_extremes_and_bad_input():
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError, match="equal length"):
        spearman([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="NaN"):
        spearman([1, np.nan, 3], [1, 2, 3])


def test_rank_report_hand_example():
    names = ["a", "b", "c", "d"]
    true = np.array([0.5, 0.1, 0.3, 0.2])
    estimate = np.array([0.4, 0.3, 0.2, 0.1])
    # ranks true: a4 b1 c3 d2; estimate: a4 b3 c2 d1; d = 0,2,-1,-1 -> rho = 1 - 6*6 / (4*15) = 0.4
    stats = rank_statistics(true, {"model": estimate}, names, top=2)
    assert stats["model"]["spearman"] == pytest.approx(0.4)
    assert stats["model"]["top"] == ["a", "b"]
    assert stats["model"]["top_overlap"] == 1
    assert stats["true frequency"]["top"] == ["a", "c"]
    table = rank_report(true, {"model": estimate}, names, top=2)
    lines = table.splitlines()
    assert lines[0] == "| rank | true frequency | model |"
    assert lines[2] == "| 1 | a (0.500) | a (0.400) |"
    assert lines[3] == "| 2 | c (0.300) | b (0.300) |"
    assert lines[4] == "| Spearman rho vs true | 1.000 | 0.400 |"
    assert lines[5] == "| top-2 overlap with true | 2/2 | 1/2 |"


def test_rank_report_reuses_given_statistics(monkeypatch):
    names, true, estimate = ["a", "b", "c"], np.array([0.5, 0.1, 0.3]), np.array([0.2, 0.4, 0.3])
    expected = rank_report(true, {"model": estimate}, names, top=2)
    statistics = rank_statistics(true, {"model": estimate}, names, top=2)

    def recomputed(*args, **kwargs):
        raise AssertionError("rank_statistics recomputed")

    monkeypatch.setattr(src.prior.ranking, "rank_statistics", recomputed)  # where rank_report calls it
    assert rank_report(true, {"model": estimate}, names, top=2, statistics=statistics) == expected


def test_rank_statistics_rejects_wrong_length():
    with pytest.raises(ValueError, match="different class list"):
        rank_statistics([0.1, 0.2], {"x": [0.1, 0.2, 0.3]}, ["a", "b"])


def test_naive_estimates_hand_example():
    labels = LabelMatrix.from_dense([[1, -1, 0], [1, 0, -1], [0, -1, -1], [-1, 1, -1]])
    naive = naive_estimates(labels)
    np.testing.assert_allclose(naive["naive (pos / N)"], [2 / 4, 1 / 4, 0])
    np.testing.assert_allclose(naive["naive (pos / annotated)"], [2 / 3, 1 / 2, 0])


def test_write_prior_csv_failure_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "prior.csv"
    write_prior_csv(str(path), ["a", "b"], [0.5, 0.25])
    with open(path, newline="", encoding="utf-8") as handle:  # as pandas' to_csv(path) wrote it
        previous = handle.read()
    assert previous == os.linesep.join(["Classes,avg_pred", "a,0.5", "b,0.25", ""])

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_prior_csv(str(path), ["a", "b"], [0.1, 0.2])
    with open(path, newline="", encoding="utf-8") as handle:
        assert handle.read() == previous
    assert os.listdir(tmp_path) == ["prior.csv"]


def test_prior_csv_round_trip(tmp_path):
    names = ["person", "None", "traffic light"]
    values = np.array([0.5, 0.012345678, 1e-7])
    path = write_prior_csv(str(tmp_path / "sub" / "prior.csv"), names, values)
    assert open(path).readline().strip() == "Classes,avg_pred" == ",".join(PRIOR_CSV_COLUMNS)
    np.testing.assert_allclose(read_prior_csv(path, names[::-1]).numpy(), values[::-1], rtol=1e-6)
    assert not [p for p in os.listdir(tmp_path / "sub") if ".tmp" in p]
    with pytest.raises(ValueError, match="2 values for 3 classes"):
        write_prior_csv(str(tmp_path / "bad.csv"), names, values[:2])


def write_prior(path, names, values):
    path.write_text("Classes,avg_pred\n" + "".join(f"{n},{v!r}\n" for n, v in zip(names, values)))
    return path


def test_prior_csv_is_matched_by_class_name(tmp_path):
    path = write_prior(tmp_path / "prior.csv", ["dog", "cat", "NA"], [0.3, 0.1, 0.2])
    torch.testing.assert_close(read_prior_csv(path), torch.tensor([0.3, 0.1, 0.2]))
    torch.testing.assert_close(read_prior_csv(path, ["cat", "NA", "dog"]), torch.tensor([0.1, 0.2, 0.3]))
    assert read_prior_csv(str(path)).dtype == torch.float32


@pytest.mark.parametrize(
    "names, content, match",
    [
        (["cat", "dog", "cow"], "Classes,avg_pred\ncat,0.1\ndog,0.2\n", r"missing 1 \['cow'\]"),
        (["cat"], "Classes,avg_pred\ncat,0.1\ndog,0.2\n", r"unknown 1 \['dog'\]"),
        (None, "Classes,avg_pred\ncat,0.1\ncat,0.2\n", "more than once: 'cat'"),
        (None, "Classes,prob\ncat,0.1\n", "lacks column"),
        (None, "Classes,avg_pred\ncat,high\n", "row 2 .*'cat'"),
        (None, "Classes,avg_pred\ncat,1.5\n", r"probabilities in \[0, 1\]"),
    ],
)
def test_bad_prior_csv_raises_a_clear_error(tmp_path, names, content, match):
    path = tmp_path / "bad_prior.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=match) as info:
        read_prior_csv(path, names)
    assert "bad_prior.csv" in str(info.value)


def test_missing_prior_file_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.csv.*omit --prior_path"):
        read_prior_csv(tmp_path / "nowhere.csv")


def test_prior_csv_tolerates_the_papers_trailing_stray_line(tmp_path):
    # The paper's outputs/priors/prior_fpc_1000.csv ends with a bare number on its own line.
    path = tmp_path / "prior_fpc_1000.csv"
    path.write_text("Classes,avg_pred\nperson,0.542279\nbicycle,0.13131638\n1542867\n")
    with pytest.warns(UserWarning, match="trailing"):
        prior = read_prior_csv(path, class_names=["person", "bicycle"])
    assert prior.tolist() == pytest.approx([0.542279, 0.13131638])
    # A stray value in the middle is still an error: only trailing empty rows are dropped.
    path.write_text("Classes,avg_pred\nperson,\nbicycle,0.13\n")
    with pytest.raises(ValueError, match="avg_pred"):
        read_prior_csv(path)


# --------------------------------------------------------------------------- the accumulator
def test_compute_prior_averages_every_update():
    prior = ComputePrior({0: "cat", 1: "dog"})  # a mapping's values are the names, as in the paper
    assert prior.classes == ["cat", "dog"] and prior.count == 0 and prior.avg_pred_train is None
    prior.update(torch.tensor([[logit(0.2), logit(0.9)], [logit(0.4), logit(0.5)]]))
    prior.update(torch.tensor([[logit(0.6), logit(0.1)]]))
    # (0.2 + 0.4 + 0.6) / 3 and (0.9 + 0.5 + 0.1) / 3
    torch.testing.assert_close(prior.avg_pred_train, torch.tensor([0.4, 0.5]))
    assert prior.count == 3 and prior.avg_pred_train.dtype == torch.float32
    with pytest.raises(ValueError, match=r"\(batch, 2\)"):
        prior.update(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="at least one class"):
        ComputePrior([])


def test_compute_prior_written_and_read_back(tmp_path):
    names = ["person", "bicycle", "car"]
    prior = ComputePrior(names)
    logits = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
    prior.update(logits[:4])
    prior.update(logits[4:])
    path = write_prior_csv(str(tmp_path / "new" / "folder" / "train_prior.csv"), prior.classes,
                           prior.avg_pred_train.numpy())
    assert open(path).readline().strip() == "Classes,avg_pred"
    torch.testing.assert_close(read_prior_csv(path, list(reversed(names))),
                               torch.sigmoid(logits.double()).mean(dim=0).flip(0).float())


def test_compute_prior_state_dict_round_trip():
    prior = ComputePrior(["a", "b", "c"])
    empty = prior.state_dict()
    assert empty["count"] == 0 and empty["sums"].dtype == torch.float64
    torch.testing.assert_close(empty["sums"], torch.zeros(3, dtype=torch.float64))
    logits = torch.tensor([[0.0, logit(0.75), logit(0.1)], [logit(0.25), logit(0.5), logit(0.3)]])
    prior.update(logits)
    state = prior.state_dict()
    assert set(state) == {"sums", "count"} and type(state["count"]) is int and state["count"] == 2
    assert state["sums"].dtype == torch.float64 and state["sums"].device.type == "cpu"
    torch.testing.assert_close(state["sums"], torch.tensor([0.75, 1.25, 0.4], dtype=torch.float64))
    state["sums"][0] = 99.0  # a copy: editing it leaves the accumulator alone
    torch.testing.assert_close(prior.avg_pred_train, torch.tensor([0.375, 0.625, 0.2]))

    resumed = ComputePrior(["a", "b", "c"])
    resumed.load_state_dict(prior.state_dict())
    assert resumed.count == 2
    torch.testing.assert_close(resumed.avg_pred_train, prior.avg_pred_train)
    more = torch.tensor([[logit(0.5), logit(0.5), logit(0.5)]])
    resumed.update(more)  # a resumed run continues the same sums
    prior.update(more)
    assert resumed.count == prior.count == 3
    torch.testing.assert_close(resumed.state_dict()["sums"], prior.state_dict()["sums"])
    torch.testing.assert_close(resumed.avg_pred_train, torch.tensor([1.25 / 3, 1.75 / 3, 0.9 / 3]))
    resumed.load_state_dict(empty)  # back to no images
    assert resumed.count == 0 and resumed.avg_pred_train is None


def test_compute_prior_load_state_dict_rejects_another_state():
    prior = ComputePrior(["a", "b"])
    with pytest.raises(ValueError, match="another class list"):
        prior.load_state_dict({"sums": torch.zeros(3, dtype=torch.float64), "count": 1})
    with pytest.raises(ValueError, match=r"lacks \['count'\]"):
        prior.load_state_dict({"sums": torch.zeros(2, dtype=torch.float64)})
    with pytest.raises(ValueError, match="count must be >= 0"):
        prior.load_state_dict({"sums": torch.zeros(2, dtype=torch.float64), "count": -1})
    assert prior.count == 0 and prior.avg_pred_train is None  # unchanged by the failed loads


def test_compute_prior_without_a_process_group_reduces_to_itself():
    prior = ComputePrior(["a", "b"])
    prior.update(torch.tensor([[0.0, logit(0.75)]]))
    assert not torch.distributed.is_initialized()
    reduced = prior.reduced_state_dict()
    assert reduced["count"] == 1
    torch.testing.assert_close(reduced["sums"], torch.tensor([0.5, 0.75], dtype=torch.float64))
    prior.all_reduce()  # no process group: nothing changes
    assert prior.count == 1
    torch.testing.assert_close(prior.avg_pred_train, torch.tensor([0.5, 0.75]))


# --------------------------------------------------------------------------- the clean pass
class _VectorDataset(Dataset):
    """Images are 2 x 2 x 2 tensors; the label is irrelevant for the prior."""

    def __init__(self, n: int, num_classes: int = 3):
        self.images = torch.randn(n, 2, 2, 2, generator=torch.Generator().manual_seed(1))
        self.class_names = [f"class{c}" for c in range(num_classes)]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], torch.zeros(len(self.class_names))


def _tiny_model(num_classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 5), nn.BatchNorm1d(5), nn.ReLU(),
                          nn.Linear(5, num_classes))
    model[2].running_mean.uniform_(-1, 1)  # make eval-mode output differ from train-mode output
    return model


def test_eval_view_swaps_the_transform_only():
    dataset = _VectorDataset(3)
    dataset.transform = "train transform"
    view = eval_view(dataset, "eval transform")
    assert (view.transform, dataset.transform) == ("eval transform", "train transform")
    assert view.images is dataset.images and view.class_names is dataset.class_names


def test_compute_prior_equals_manual_mean_in_eval_mode():
    dataset = _VectorDataset(7)
    model = _tiny_model()
    with torch.no_grad():
        expected = torch.sigmoid(model.eval()(dataset.images)).mean(0).numpy()
        # a copy: a train-mode forward updates the batch-norm running statistics
        train_mode = torch.sigmoid(copy.deepcopy(model).train()(dataset.images)).mean(0).numpy()
    assert not np.allclose(expected, train_mode, atol=1e-3)  # the check below can tell the modes apart
    prior = compute_prior_from_model(model, dataset, "cpu", batch_size=3)  # 3 + 3 + 1 images
    assert prior.shape == (3,) and prior.dtype == np.float32
    np.testing.assert_allclose(prior, expected, rtol=1e-5)
    model.train()
    compute_prior_from_model(model, dataset, "cpu", batch_size=3)
    assert model.training  # the caller's mode is restored


def test_compute_prior_feeds_a_channels_last_model_channels_last_input():
    """As src.engine.predict does: a model converted to channels_last gets channels_last batches."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 2), nn.Flatten(), nn.Linear(36, 3))
    model = model.to(memory_format=torch.channels_last)
    images = torch.randn(5, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    dataset = _VectorDataset(5)
    dataset.images = images
    layouts = []
    model.register_forward_pre_hook(lambda module, inputs: layouts.append(
        inputs[0].is_contiguous(memory_format=torch.channels_last) and not inputs[0].is_contiguous()))
    prior = compute_prior_from_model(model, dataset, "cpu", batch_size=2)
    assert layouts == [True, True, True]  # batches of 2, 2, 1
    with torch.no_grad():
        expected = torch.sigmoid(model.eval()(images)).mean(0).numpy()
    np.testing.assert_allclose(prior, expected, rtol=1e-5)


def _rank_logits(rank: int) -> list[torch.Tensor]:
    """The batches rank ``rank`` adds to the accumulator (rank 0: 3 + 1 images, rank 1: 2 images)."""
    generator = torch.Generator().manual_seed(10 + rank)
    sizes = (3, 1) if rank == 0 else (2,)
    return [torch.randn(n, 3, generator=generator) * 2 for n in sizes]


def _accumulator_checks(rank: int, out_dir: str) -> None:
    """ComputePrior under a 2-rank process group; the results go to acc<rank>.pt for the test to check."""
    prior = ComputePrior(["a", "b", "c"])
    for logits in _rank_logits(rank):
        prior.update(logits)
    before = prior.state_dict()
    reduced = prior.reduced_state_dict()  # a collective: the global state, prior itself unchanged
    unchanged = prior.state_dict()
    prior.all_reduce()  # in place: every rank now holds the global sums
    only_rank0 = ComputePrior(["a", "b", "c"])  # a rank without any update still takes part
    if rank == 0:
        only_rank0.update(_rank_logits(0)[0])
    only_rank0.all_reduce()
    torch.save({"before": before, "reduced": reduced, "unchanged": unchanged, "after": prior.state_dict(),
                "avg_pred_train": prior.avg_pred_train, "only_rank0": only_rank0.state_dict()},
               os.path.join(out_dir, f"acc{rank}.pt"))


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import datetime

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        _accumulator_checks(rank, out_dir)
        model, seen = _tiny_model(), []
        model.register_forward_pre_hook(lambda module, inputs: seen.append(len(inputs[0])))
        prior = compute_prior_from_model(model, _VectorDataset(7), "cpu", batch_size=2)
        np.save(os.path.join(out_dir, f"rank{rank}.npy"), prior)
        np.save(os.path.join(out_dir, f"seen{rank}.npy"), np.array(seen))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_gloo_ranks(tmp_path_factory):
    """The output folder of `_ddp_worker` run by two gloo ranks on CPU (one process group for all checks)."""
    out_dir = tmp_path_factory.mktemp("two_ranks")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Rank 1 in a spawned process (fork could deadlock in torch's inherited thread pool), rank 0 here:
    # one interpreter start instead of two.
    worker = mp.get_context("spawn").Process(target=_ddp_worker, args=(1, 2, port, str(out_dir)))
    worker.start()
    try:
        _ddp_worker(0, 2, port, str(out_dir))
    finally:
        worker.join(timeout=120)
    assert worker.exitcode == 0
    return out_dir


@pytest.mark.slow
def test_compute_prior_all_reduce_over_two_gloo_ranks(two_gloo_ranks):
    """reduced_state_dict and all_reduce sum over the ranks (checked against a sum computed here), and
    reduced_state_dict leaves the accumulator as it was."""
    results = [torch.load(two_gloo_ranks / f"acc{rank}.pt") for rank in range(2)]
    logits = [batch for rank in range(2) for batch in _rank_logits(rank)]
    expected_sums = sum(torch.sigmoid(batch.double()).sum(0) for batch in logits)
    for rank, result in enumerate(results):
        own = sum(torch.sigmoid(batch.double()).sum(0) for batch in _rank_logits(rank))
        own_count = sum(len(batch) for batch in _rank_logits(rank))
        assert result["before"]["count"] == result["unchanged"]["count"] == own_count
        torch.testing.assert_close(result["before"]["sums"], own)
        torch.testing.assert_close(result["unchanged"]["sums"], own)  # reduced_state_dict: self unchanged
        for state in (result["reduced"], result["after"]):
            assert state["count"] == 6 and state["sums"].dtype == torch.float64
            torch.testing.assert_close(state["sums"], expected_sums)
        torch.testing.assert_close(result["avg_pred_train"], (expected_sums / 6).float())
        assert result["only_rank0"]["count"] == 3
        torch.testing.assert_close(result["only_rank0"]["sums"],
                                   torch.sigmoid(_rank_logits(0)[0].double()).sum(0))


@pytest.mark.slow
def test_compute_prior_two_gloo_ranks_equals_single_process(two_gloo_ranks):
    single = compute_prior_from_model(_tiny_model(), _VectorDataset(7), "cpu", batch_size=2)
    # 7 images in batches of 2: rank 0 predicts 2 + 2, rank 1 2 + 1 (no image twice, none missing) ...
    assert [np.load(two_gloo_ranks / f"seen{rank}.npy").tolist() for rank in range(2)] == [[2, 2], [2, 1]]
    for rank in range(2):  # ... and both return the mean over all 7
        np.testing.assert_allclose(np.load(two_gloo_ranks / f"rank{rank}.npy"), single, rtol=1e-6)


# --------------------------------------------------------------------------- command line
# The command (src.prior_command) and tests.test_validate are imported inside the tests: the DDP test's
# spawned worker re-imports this module.
def _cli_argv(checkpoint, data_dir, out, *extra):
    from tests.conftest import TINY_IMAGE_SIZE

    return ["--model_path", str(checkpoint), "--data", str(data_dir), "--image-size", str(TINY_IMAGE_SIZE),
            "-b", "16", "-j", "0", "--device", "cpu", "--simulate_partial_type", "fpc",
            "--simulate_partial_param", "10", "--seed", "0", *([] if out is None else ["--out", str(out)]),
            *extra]


@pytest.mark.slow
def test_cli_reproduces_the_training_prior_and_reports_ranks(stage1_run, embedded_data_dir, tmp_path, capsys):
    """On the smoke run's best model, the separate command writes the prior train.py wrote at the end of
    stage 1 (same clean pass), and ranks it against the true frequencies of the JSON labels."""
    from scipy.stats import spearmanr

    from src.prior_command import main
    from tests.test_validate import embedded_split

    result = main(_cli_argv(stage1_run["best"], embedded_data_dir, tmp_path / "prior.csv",
                            "--compare", stage1_run["prior"]))
    out = capsys.readouterr().out
    names = result["class_names"]
    np.testing.assert_allclose(read_prior_csv(tmp_path / "prior.csv", names).numpy(),
                               read_prior_csv(stage1_run["prior"], names).numpy(), atol=1e-6)
    # Without --image-size: the 32 px the checkpoint records, the same prior
    argv = _cli_argv(stage1_run["best"], embedded_data_dir, tmp_path / "p2.csv")
    np.testing.assert_array_equal(main(argv[:4] + argv[6:])["prior"], result["prior"])
    out = out + capsys.readouterr().out

    _, _, full = embedded_split(embedded_data_dir, "train")
    true_freq = full.sum(0) / len(full)
    stats = result["statistics"]
    compare = stage1_run["prior"]  # --compare files are keyed by the path as given
    assert list(stats) == ["true frequency", "this estimate", "naive (pos / N)", "naive (pos / annotated)",
                           compare]
    expected_rho = spearmanr(true_freq, result["prior"]).statistic
    assert stats["this estimate"]["spearman"] == pytest.approx(expected_rho)
    assert stats[compare]["spearman"] == pytest.approx(stats["this estimate"]["spearman"], abs=1e-6)
    true_top = [names[i] for i in np.argsort(-true_freq, kind="stable")[:10]]
    assert stats["true frequency"]["top"] == true_top
    assert f"| 1 | {true_top[0]} ({true_freq.max():.3f}) |" in out
    assert "| Spearman rho vs true | 1.000 |" in out


def test_cli_errors(embedded_data_dir, tmp_path):
    from src.prior_command import main
    from tests.test_validate import embedded_split, save_tiny_checkpoint

    with pytest.raises(FileNotFoundError, match="--model_path: checkpoint .*missing.pth' does not exist"):
        main(_cli_argv(tmp_path / "missing.pth", embedded_data_dir, tmp_path / "p.csv"))
    names = embedded_split(embedded_data_dir)[0]
    save_tiny_checkpoint(tmp_path / "five.pth", names[:5])
    with pytest.raises(ValueError, match="predicts 5 classes but the coco training set .* has 48"):
        main(_cli_argv(tmp_path / "five.pth", embedded_data_dir, tmp_path / "p.csv"))
    save_tiny_checkpoint(tmp_path / "shuffled.pth", names[::-1])
    with pytest.raises(ValueError, match="in another order"):
        main(_cli_argv(tmp_path / "shuffled.pth", embedded_data_dir, tmp_path / "p.csv"))
    save_tiny_checkpoint(tmp_path / "tiny.pth", names)
    with pytest.raises(FileNotFoundError, match="--compare: prior file"):
        main(_cli_argv(tmp_path / "tiny.pth", embedded_data_dir, tmp_path / "p.csv", "--compare", "x.csv"))
    with pytest.raises(ValueError, match="--out: .* should be a .csv file"):
        main(_cli_argv(tmp_path / "tiny.pth", embedded_data_dir, tmp_path / "p.txt"))
    wrong = tmp_path / "wrong.csv"
    write_prior_csv(str(wrong), names[:3], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="does not match the model's classes"):
        main(_cli_argv(tmp_path / "tiny.pth", embedded_data_dir, tmp_path / "p.csv", "--compare", str(wrong)))


def test_cli_takes_the_image_size_from_the_checkpoint(embedded_data_dir, tmp_path, capsys):
    """A 32-px checkpoint gives the same prior with and without --image-size 32 (not the paper's 448), equal
    to the mean sigmoid of an independent forward pass at 32 px; the settings line names the sources."""
    from src.prior_command import main
    from tests.conftest import TINY_IMAGE_SIZE, TINY_MODEL
    from tests.test_validate import embedded_split, manual_scores, save_sized_checkpoint

    names, _, _ = embedded_split(embedded_data_dir)
    model = save_sized_checkpoint(tmp_path / "sized.pth", names, TINY_IMAGE_SIZE)
    argv = _cli_argv(tmp_path / "sized.pth", embedded_data_dir, tmp_path / "p.csv")
    assert argv[4:6] == ["--image-size", str(TINY_IMAGE_SIZE)]
    without = main(argv[:4] + argv[6:])
    assert (f"settings: image_size {TINY_IMAGE_SIZE} (checkpoint), model {TINY_MODEL} (checkpoint), classes "
            f"{len(names)} (checkpoint), bottleneck head False (checkpoint), batch 16 (flag)"
            ) in capsys.readouterr().out
    given = main([*argv, "--overwrite"])  # the same --out again
    _, train_paths, _ = embedded_split(embedded_data_dir, "train")
    expected = manual_scores(model, train_paths, size=TINY_IMAGE_SIZE).mean(axis=0)
    np.testing.assert_allclose(without["prior"], expected, atol=1e-5)
    np.testing.assert_array_equal(given["prior"], without["prior"])
    refused = r"holds a test_resnet .*--model-name says 'resnet18'; drop --model-name"
    with pytest.raises(ValueError, match=refused):
        main([*argv, "--model-name", "resnet18"])


def test_cli_compare_files_with_the_same_name_stay_apart(embedded_data_dir, tmp_path, monkeypatch):
    """r1/p.csv and r2/p.csv are two columns (keyed by the path as given); ranks computed once."""
    from scipy.stats import spearmanr

    import src.prior_command as prior_cli
    from tests.test_validate import embedded_split, save_tiny_checkpoint

    names, _, _ = embedded_split(embedded_data_dir)
    _, _, full = embedded_split(embedded_data_dir, "train")
    true_freq = full.sum(0) / len(full)
    save_tiny_checkpoint(tmp_path / "tiny.pth", names)
    rng = np.random.default_rng(0)
    files = {}
    for run in ("r1", "r2"):
        files[str(tmp_path / run / "p.csv")] = rng.random(len(names))
        write_prior_csv(str(tmp_path / run / "p.csv"), names, files[str(tmp_path / run / "p.csv")])
    calls = []
    real = prior_cli.rank_statistics
    monkeypatch.setattr(prior_cli, "rank_statistics", lambda *a, **k: calls.append(1) or real(*a, **k))
    result = prior_cli.main(_cli_argv(tmp_path / "tiny.pth", embedded_data_dir, tmp_path / "p.csv",
                                         "--compare", *files))
    stats = result["statistics"]
    assert list(stats)[-2:] == list(files)
    for path, values in files.items():
        assert stats[path]["spearman"] == pytest.approx(spearmanr(true_freq, values).statistic, abs=1e-9)
    assert len(calls) == 1


def test_cli_bad_out_fails_before_any_work(embedded_data_dir, tmp_path, monkeypatch, capsys):
    import src.prior_command as prior_cli
    from src.prior_command import cli, main
    from tests.test_validate import embedded_split, save_tiny_checkpoint

    save_tiny_checkpoint(tmp_path / "tiny.pth", embedded_split(embedded_data_dir)[0])

    def no_work(*args, **kwargs):
        raise AssertionError("init_distributed reached")

    monkeypatch.setattr(prior_cli, "init_distributed", no_work)
    (tmp_path / "dir.csv").mkdir()
    argv = _cli_argv(tmp_path / "tiny.pth", embedded_data_dir, tmp_path / "dir.csv")
    with pytest.raises(ValueError, match=r"--out: .*dir.csv' is a folder, not a file; pass a file path"):
        main(argv)
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert "error: --out" in err and "Traceback" not in err
    (tmp_path / "plain_file").write_text("")
    with pytest.raises(ValueError, match=r"--out: .*plain_file' is a file, not a folder"):
        main(_cli_argv(tmp_path / "tiny.pth", embedded_data_dir, tmp_path / "plain_file" / "p.csv"))
    with pytest.raises(AssertionError, match="init_distributed reached"):  # a good path: its folder is made
        main(_cli_argv(tmp_path / "tiny.pth", embedded_data_dir, tmp_path / "new" / "deeper" / "p.csv"))
    assert (tmp_path / "new" / "deeper").is_dir()


@pytest.mark.slow
def test_cli_default_out_is_next_to_the_checkpoint(stage1_run, embedded_data_dir, tmp_path, monkeypatch):
    """Without --out: one file per checkpoint and weights, in the checkpoint's folder, never train.py's."""
    import shutil

    from src.prior_command import main

    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(stage1_run["last"], run / "last.pth")
    shutil.copy(stage1_run["best"], run / "best.pth")
    ema = main(_cli_argv(run / "last.pth", embedded_data_dir, None, "--use_ema"))
    regular = main(_cli_argv(run / "last.pth", embedded_data_dir, None))
    best = main(_cli_argv(run / "best.pth", embedded_data_dir, None))
    assert ema["path"] == str(run / "prior_fpc_10_last_ema.csv")
    assert regular["path"] == str(run / "prior_fpc_10_last.csv")
    assert best["path"] == str(run / "prior_fpc_10_best.csv")
    # train.py writes <path_dest>/priors/prior_fpc_10.csv (the stage1_run fixture's "prior")
    assert os.path.basename(stage1_run["prior"]) == "prior_fpc_10.csv"
    assert os.path.join(str(run), "priors", "prior_fpc_10.csv") not in {
        ema["path"], regular["path"], best["path"]}
    assert sorted(os.listdir(run)) == ["best.pth", "last.pth", "prior_fpc_10_best.csv",
                                       "prior_fpc_10_last.csv", "prior_fpc_10_last_ema.csv"]
    assert not os.path.exists(tmp_path / "outputs")


@pytest.mark.parametrize("rank", [0, 1])
def test_cli_class_name_note_only_on_rank_0(embedded_data_dir, tmp_path, monkeypatch, capsys, rank):
    import src.prior_command as prior_cli
    from src.utils.distributed import DistributedContext
    from tests.test_validate import embedded_split, save_tiny_checkpoint

    names = embedded_split(embedded_data_dir)[0]
    save_tiny_checkpoint(tmp_path / "renamed.pth", [f"x_{n}" for n in names])
    ctx = DistributedContext(rank=rank, world_size=2, device=torch.device("cpu"))
    monkeypatch.setattr(prior_cli, "init_distributed", lambda device, timeout_s=None: ctx)
    prior_cli.main(_cli_argv(tmp_path / "renamed.pth", embedded_data_dir, tmp_path / "p.csv"))
    out = capsys.readouterr().out
    assert (f"note: {len(names)} of {len(names)} class names of the checkpoint differ" in out) == (rank == 0)


def test_jpeg_draft_flag_reaches_the_training_images(embedded_data_dir):
    from src.prior_command import _load_train_sets, build_parser

    argv = _cli_argv("unused.pth", embedded_data_dir, "p.csv")
    args = build_parser().parse_args(argv)
    assert args.jpeg_draft is True and _load_train_sets(args)[0].transform.draft_size == (32, 32)
    for flag in ("--no-jpeg_draft", "--no-jpeg-draft"):
        args = build_parser().parse_args([*argv, flag])
        assert args.jpeg_draft is False and _load_train_sets(args)[0].transform.draft_size is None


def test_the_prior_never_imports_the_loss():
    """The loss reads the prior file (src.loss_functions -> src.prior), never the reverse."""
    import ast
    import glob

    files = sorted(glob.glob(os.path.join(os.path.dirname(src.prior.ranking.__file__), "*.py")))
    offenders = []
    for path in files:
        with open(path, encoding="utf-8") as handle:
            tree = ast.parse(handle.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{os.path.basename(path)}: {n}" for n in names
                          if n.startswith("src.loss_functions")]
    assert len(files) == 5 and offenders == []


def test_the_shipped_priors_fit_todays_demo_data():
    """outputs/priors/ ships priors of the demo's data (README there): their classes are the glyphs design's,
    in its order, and every value is a probability - a stale file of another design fails here."""
    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "outputs", "priors")
    files = sorted(glob.glob(os.path.join(folder, "*.csv")))
    assert [os.path.basename(f) for f in files] == ["prior_embedded_glyphs_fpc244_seed0.csv",
                                                    "prior_embedded_glyphs_rps0.5_seed0.csv"]
    for path in files:
        prior = read_prior_csv(path, class_names("embedded", "glyphs")).numpy()
        assert prior.shape == (48,) and ((prior > 0) & (prior < 1)).all()
