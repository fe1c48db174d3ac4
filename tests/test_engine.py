"""src/engine.py: one evaluation pass for a dict of models equals separate passes; the indexed loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from src.engine import IndexedDataset, build_eval_loader, build_train_loader, evaluate, predict


class _Pictures(torch.utils.data.Dataset):
    """Random 3 x 4 x 4 'images' with labels in {1, 0, -1}; counts how often each item is loaded."""

    def __init__(self, n=23, classes=5, seed=0):
        rng = np.random.default_rng(seed)
        self.images = torch.from_numpy(rng.normal(size=(n, 3, 4, 4)).astype(np.float32))
        self.targets = torch.from_numpy(rng.integers(-1, 2, size=(n, classes)).astype(np.float32))
        self.class_names = [f"c{i}" for i in range(classes)]
        self.loads = 0

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        self.loads += 1
        return self.images[i], self.targets[i]


def _model(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.Flatten(),
                               torch.nn.Linear(8, 5))


def test_evaluating_a_dict_of_models_equals_separate_passes_and_loads_each_item_once():
    data = _Pictures()
    models = {"a": _model(0), "b": _model(1)}
    models["a"].eval()  # each model gets its own train/eval mode back afterwards
    loader = build_eval_loader(data, batch_size=4, workers=0)
    together = evaluate(models, loader, "cpu", threshold=0.5)
    assert data.loads == len(data)  # one pass for both models
    for name, model in models.items():
        alone = evaluate(model, loader, "cpu", threshold=0.5)
        for key in ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1"):
            assert together[name][key] == alone[key], (name, key)  # exactly: same batches, same kernels
    assert models["b"].training and not models["a"].training
    targets, scores = predict(models, loader, "cpu")  # a dict of models: a dict of scores
    alone_targets, alone_scores = predict(models["b"], loader, "cpu")
    assert set(scores) == {"a", "b"} and scores["b"].shape == (len(data), 5)
    np.testing.assert_array_equal(scores["b"], alone_scores)
    np.testing.assert_array_equal(targets, alone_targets)
    np.testing.assert_array_equal(targets, data.targets.numpy().astype(np.int8))


def test_train_loader_items_carry_their_dataset_index():
    data = _Pictures(n=10)
    loader = build_train_loader(data, batch_size=3, workers=0, seed=0, device="cpu", rank=0, world_size=1)
    seen = []
    for images, targets, indices in loader:
        for image, target, index in zip(images, targets, indices.tolist()):
            assert torch.equal(image, data.images[index]) and torch.equal(target, data.targets[index])
            seen.append(index)
    assert sorted(seen) == list(range(10))
    assert IndexedDataset(data)[7][2] == 7


def test_predict_names_a_class_count_mismatch_and_restores_the_mode():
    data = _Pictures(n=6)
    wrong = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 4))  # 4 outputs, 5 classes
    loader = build_eval_loader(data, batch_size=4, workers=0)
    with pytest.raises(ValueError, match="outputs 4 classes but the dataset has 5"):
        predict({"right": _model(0), "wrong": wrong}, loader, "cpu")
    assert wrong.training  # the pass stopped early, the train mode is back
