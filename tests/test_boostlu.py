"""BoostLU (`src.models.boostlu`): the head against a hand re-statement of their models.py forward, the
state-dict keys, the refusals, and a train.py run whose checkpoint rebuilds the boosted model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import train
from src.models import create_model, load_model, model_metadata
from src.models.boostlu import BoostLUClassifier
from tests.conftest import EMBEDDED_NUM_CLASSES, TINY_MODEL, single_thread, tiny_train_argv

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def _their_forward(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, alpha: float):
    """Their ImageClassifier.forward after the feature extractor: a 1x1 Conv2d, the boost, the average,
    written with a real nn.Conv2d holding the classifier's weights."""
    conv = torch.nn.Conv2d(weight.shape[1], weight.shape[0], 1)
    with torch.no_grad():
        conv.weight.copy_(weight[:, :, None, None])
        conv.bias.copy_(bias)
    cam = conv(features)
    cam = torch.where(cam > 0, cam * alpha, cam)
    return F.adaptive_avg_pool2d(cam, 1).squeeze(-1).squeeze(-1)


@pytest.mark.parametrize("model_name", [TINY_MODEL, "tresnet_m"])
def test_boosted_logits_are_their_cam_forward_and_alpha_one_is_the_plain_model(model_name):
    torch.manual_seed(0)
    size = 64 if model_name == "tresnet_m" else 32
    plain = create_model(model_name=model_name, num_classes=7).eval()
    boosted = create_model(model_name=model_name, num_classes=7, boostlu_alpha=5.0).eval()
    assert list(boosted.state_dict()) == list(plain.state_dict())  # same keys: checkpoints interchange
    boosted.load_state_dict(plain.state_dict())
    one = create_model(model_name=model_name, num_classes=7, boostlu_alpha=1.0).eval()
    one.load_state_dict(plain.state_dict())
    images = torch.randn(3, 3, size, size)
    classifier = plain.get_submodule(plain.pretrained_cfg["classifier"])
    with torch.no_grad():
        features = plain.forward_features(images)
        expected = _their_forward(features, classifier.weight, classifier.bias, 5.0)
        got = boosted(images)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(one(images), plain(images), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(got, plain(images), atol=1e-3)  # the boost changes the logits


def test_boost_only_scales_positive_activations_hand_computed():
    linear = torch.nn.Linear(2, 1)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0, -1.0]]))
        linear.bias.zero_()
    head = BoostLUClassifier(linear, alpha=3.0)
    features = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]]]])  # 1 x 2 x 1 x 2: CAM values 2 and -1
    assert head(features).item() == pytest.approx((3.0 * 2.0 + -1.0) / 2)  # 2.5; plain mean: 0.5
    assert head.weight is linear.weight  # the classifier's own parameters


def test_boostlu_refuses_what_has_no_class_activation_map():
    with pytest.raises(ValueError, match="bottleneck head has no .*--no-do_bottleneck_head"):
        create_model(model_name=TINY_MODEL, num_classes=3, do_bottleneck_head=True, boostlu_alpha=5.0)
    for alpha in (0, -1.0, float("nan"), True):
        with pytest.raises(ValueError, match="boostlu_alpha must be a positive number"):
            create_model(model_name=TINY_MODEL, num_classes=3, boostlu_alpha=alpha)
    with pytest.raises(SystemExit):
        train.parse_args(["--boostlu_alpha", "0"])


@pytest.mark.slow
def test_train_with_boostlu_checkpoint_rebuilds_the_boosted_model(embedded_data_dir, tmp_path):
    argv = tiny_train_argv(embedded_data_dir, tmp_path, "--partial_loss_mode", "ll_r", "--boostlu_alpha", "5",
                           "--epochs", "2")
    with single_thread():
        train.main(argv)
    checkpoint = torch.load(tmp_path / "best.pth", map_location="cpu", weights_only=True)
    assert checkpoint["boostlu_alpha"] == 5.0
    model, _ = load_model(tmp_path / "best.pth")
    assert model_metadata(model)["boostlu_alpha"] == 5.0
    plain = create_model(model_name=TINY_MODEL, num_classes=EMBEDDED_NUM_CLASSES).eval()
    plain.load_state_dict(checkpoint["model"])
    images = torch.randn(2, 3, 32, 32)
    classifier = plain.get_submodule(plain.pretrained_cfg["classifier"])
    with torch.no_grad():
        expected = _their_forward(plain.forward_features(images), classifier.weight, classifier.bias, 5.0)
        torch.testing.assert_close(model(images), expected, rtol=1e-5, atol=1e-5)
