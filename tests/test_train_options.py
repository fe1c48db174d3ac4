"""train.py end to end with the speed/memory options on CPU and with a --partial_labels file.

Not covered elsewhere: test_train.py checks that these flags parse (and runs --channels_last once);
test_simulation.py reads a coco_simulation file through build_datasets with a hand-made namespace.
Here train.main itself runs, and the tests observe what the run really did: the dtype and memory
format at the model during training, the checkpointed recomputation, and the label matrix trained on.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
import torch.utils.checkpoint

import train
from tests.conftest import EMBEDDED_NUM_CLASSES, tiny_train_argv

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def _metrics_lines(path_dest):
    with open(os.path.join(path_dest, "metrics.jsonl"), encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def _args_json(path_dest):
    with open(os.path.join(path_dest, "args.json"), encoding="utf-8") as handle:
        return json.load(handle)


def test_bf16_amp_grad_checkpointing_channels_last_run_on_cpu(embedded_data_dir, tmp_path, monkeypatch):
    seen = []  # (training, grad enabled, input channels_last, output dtype) of every model forward

    def hook(module, inputs, output):
        seen.append((module.training, torch.is_grad_enabled(),
                     inputs[0].is_contiguous(memory_format=torch.channels_last), output.dtype))

    original_build_model = train.build_model_from_args

    def build_model_with_hook(*args, **kwargs):
        model = original_build_model(*args, **kwargs)
        model.register_forward_hook(hook)
        return model

    checkpoint_calls = []
    original_checkpoint = torch.utils.checkpoint.checkpoint

    def counting_checkpoint(*args, **kwargs):
        checkpoint_calls.append(torch.is_grad_enabled())
        return original_checkpoint(*args, **kwargs)

    monkeypatch.setattr(train, "build_model_from_args", build_model_with_hook)
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counting_checkpoint)
    dest = tmp_path / "options"
    summary = train.main(tiny_train_argv(embedded_data_dir, dest, "--amp", "--amp_dtype", "bfloat16",
                                         "--grad_checkpointing", "--channels_last"))

    config = _args_json(dest)
    assert config["amp"] is True and config["amp_dtype"] == "bfloat16"
    assert config["resolved_amp_dtype"] == "bfloat16" and config["resolved_device"] == "cpu"
    assert config["grad_checkpointing"] is True and config["channels_last"] is True

    # What the run did: 6 training steps and evaluations, all under bfloat16 autocast, channels_last
    # inputs, and the training forwards recomputed through torch.utils.checkpoint.
    training = [entry for entry in seen if entry[0]]
    assert len(training) == config["steps_per_epoch"] == 6
    assert all(grad for _, grad, _, _ in training)
    assert len(seen) > len(training)  # the evaluation forwards
    assert {dtype for *_, dtype in seen} == {torch.bfloat16}
    assert all(is_channels_last for _, _, is_channels_last, _ in seen)
    recomputed = sum(checkpoint_calls)  # grad-enabled calls; timm's path also calls it under no_grad
    assert recomputed > 0 and recomputed % 6 == 0  # the same checkpointed segments in every step

    lines = _metrics_lines(dest)
    assert [line["epoch"] for line in lines] == [1]
    for key in ("test_regular_mAP", "test_ema_mAP", "selection_mAP", "loss"):
        assert math.isfinite(lines[0][key]), key
    assert 0 < lines[0]["test_regular_mAP"] <= 100 and 0 < lines[0]["test_ema_mAP"] <= 100
    assert summary["best_test_mAP"] == lines[0]["selection_mAP"]
    state = torch.load(dest / "last.pth", map_location="cpu", weights_only=True)
    weights = [value for value in state["model"].values() if value.is_floating_point()]
    assert {value.dtype for value in weights} == {torch.float32}  # autocast leaves the weights in fp32
    assert all(torch.isfinite(value).all() for value in weights)


def _without_simulation(argv: list[str]) -> list[str]:
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item in ("--simulate_partial_type", "--simulate_partial_param"):
            skip = True
        else:
            out.append(item)
    return out


def test_partial_labels_file_from_coco_simulation_is_what_train_py_trains_on(embedded_data_dir, tmp_path,
                                                                            monkeypatch):
    from coco_simulation.__main__ import main as simulate_main
    from src.data import resolve_coco_files
    from src.data.coco import CocoDetection
    from src.data.partial_labels import load_partial_labels, simulate_partial_labels

    labels_file = tmp_path / "rps_0.5.npz"
    assert simulate_main(["--data", embedded_data_dir, "--simulate_partial_type", "rps",
                          "--simulate_partial_param", "0.5", "--seed", "4", "--out", str(labels_file),
                          "--plot", "none"]) == 0
    file_labels = load_partial_labels(labels_file)
    full = CocoDetection(*resolve_coco_files(embedded_data_dir, None, "train")).labels.to_dense()
    assert file_labels.shape == full.shape == (96, EMBEDDED_NUM_CLASSES)
    assert (file_labels == -1).any() and not np.array_equal(file_labels, full)  # really partial
    # The run's own default would be a different draw (fpc 10): equality below identifies the file.
    assert not np.array_equal(file_labels, simulate_partial_labels(full, "fpc", 10, 0))

    used = []
    original_build_datasets = train.build_datasets_with_summary

    def recording_build_datasets(args):
        train_set, val_set, summary = original_build_datasets(args)
        used.append(train_set.labels.to_dense())
        return train_set, val_set, summary

    monkeypatch.setattr(train, "build_datasets_with_summary", recording_build_datasets)
    dest = tmp_path / "run"
    argv = _without_simulation(tiny_train_argv(embedded_data_dir, dest, "--partial_labels", str(labels_file)))
    summary = train.main(argv)

    assert len(used) == 1
    np.testing.assert_array_equal(used[0], file_labels)
    config = _args_json(dest)
    assert config["partial_labels"] == str(labels_file) and config["simulate_partial_type"] is None
    assert config["num_train_images"] == 96
    lines = _metrics_lines(dest)
    assert [line["epoch"] for line in lines] == [1] and math.isfinite(lines[0]["selection_mAP"])
    assert len(summary["history"]) == 1


def test_cache_images_decodes_once_and_trains_to_the_same_result(embedded_data_dir, tmp_path, monkeypatch):
    from src.data.base import MultiLabelImageDataset

    plain = train.main(tiny_train_argv(embedded_data_dir, tmp_path / "plain"))
    cached_roots = []
    original = MultiLabelImageDataset.cache_decoded_images

    def recording(self, *args, **kwargs):
        done = original(self, *args, **kwargs)
        cached_roots.append((os.path.basename(self.root), done))
        return done

    monkeypatch.setattr(MultiLabelImageDataset, "cache_decoded_images", recording)
    cached = train.main(tiny_train_argv(embedded_data_dir, tmp_path / "cached", "--cache_images"))
    assert cached_roots == [("train2014", True), ("val2014", True)]
    assert [h["loss"] for h in cached["history"]] == [h["loss"] for h in plain["history"]]
    assert cached["best_test_mAP"] == plain["best_test_mAP"]  # same pixels, same augmentation


def test_run_folder_is_printed_at_start_and_at_end(embedded_data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = tiny_train_argv(embedded_data_dir, "unused", "--partial_loss_mode", "ignore")
    at = argv.index("--path_dest")
    train.main(argv[:at] + argv[at + 2:])  # no --path_dest: a fresh folder under ./outputs
    lines = capsys.readouterr().out.splitlines()
    printed = [i for i, line in enumerate(lines) if line.startswith("run folder: ")]
    (created,) = os.listdir(tmp_path / "outputs")
    assert created.endswith("_ignore_fpc_10")
    assert len(printed) == 2 and printed[0] < 3 and printed[1] == len(lines) - 1
    for i in printed:
        assert os.path.samefile(lines[i][len("run folder: "):], tmp_path / "outputs" / created)
    assert os.path.isfile(tmp_path / "outputs" / created / "args.json")
