"""Tests of the model factory and the checkpoint loaders.

The key check compares the converted timm model with an independent functional re-implementation of
the paper's TResNet forward (written from the paper's definition, reading the *unconverted* InPlaceABN
state dict): InPlaceABN = batch norm with scale |w|+1e-5 then leaky ReLU (stem 1e-2, block convs 1e-3)
or identity (last conv of a block, shortcut), anti-aliasing = reflect pad + [1,2,1]x[1,2,1]/16 blur with
stride 2, SE = mean -> 1x1 conv -> ReLU -> 1x1 conv -> sigmoid gate, space-to-depth with block 4.
"""

import argparse
import collections
import copy
import functools
import io
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers import BlurPool2d
from timm.models.tresnet import TResNet, checkpoint_filter_fn

from src.models import (
    BottleneckHead,
    CheckpointError,
    build_model_from_args,
    check_model_classes,
    convert_original_to_timm,
    create_model,
    extract_state_dict,
    infer_tresnet_name,
    load_model,
    load_pretrained_backbone,
    maybe_compile,
    model_metadata,
    read_pth,
    resolve_bottleneck_head,
    set_grad_checkpointing,
)
from src.models.factory import CheckpointedSequential
from src.models.loading import load_state_dict_strict

MANIFEST_DIR = Path(__file__).parent / 'fixtures' / 'original_tresnet_layout'
MANIFESTS = {
    'tresnet_m_coco80': ('tresnet_m', 80, False),
    'tresnet_m_openimages9605': ('tresnet_m', 9605, True),
    'tresnet_l_coco80': ('tresnet_l', 80, False),
    'tresnet_l_openimages9605': ('tresnet_l', 9605, True),
}


# ----------------------------------------------------------------------------- random paper checkpoints
@functools.lru_cache(maxsize=4)
def random_original_state_dict(manifest: str, seed: int = 0, zero_weights: bool = False) -> dict:
    """Random tensors with exactly the keys/shapes/dtypes of a paper-layout manifest (cached: do not mutate).

    ABN weights take both signs (magnitudes 0.2-1) to exercise |w|; running stats are non-trivial.
    ``zero_weights`` leaves conv/linear weights at zero (fast; for key/shape checks only).
    """
    layout = json.loads((MANIFEST_DIR / f'{manifest}.json').read_text())
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, spec in layout.items():
        shape = spec['shape']
        if spec['dtype'] == 'int64':
            state[key] = torch.tensor(7, dtype=torch.int64)
        elif key.endswith('running_var'):
            state[key] = torch.rand(shape, generator=gen) + 0.5
        elif key.endswith('running_mean') or key.endswith('bias'):
            state[key] = torch.randn(shape, generator=gen) * 0.1
        elif len(shape) == 1:  # ABN weight
            sign = torch.randint(0, 2, shape, generator=gen) * 2 - 1
            state[key] = sign * (0.2 + 0.8 * torch.rand(shape, generator=gen))
        elif zero_weights:
            state[key] = torch.zeros(shape)
        else:  # conv / linear weight, variance-preserving scale
            fan_in = math.prod(shape[1:])
            state[key] = torch.randn(shape, generator=gen) * math.sqrt(1.0 / fan_in)
    return state


# ---------------------------------------------------------------- reference forward of the paper's model
def ref_abn(x, sd, prefix, slope):
    scale = sd[f'{prefix}.weight'].abs() + 1e-5
    mean, var, bias = (sd[f'{prefix}.{name}'].view(1, -1, 1, 1)
                       for name in ('running_mean', 'running_var', 'bias'))
    y = (x - mean) / torch.sqrt(var + 1e-5) * scale.view(1, -1, 1, 1) + bias
    return y if slope is None else torch.where(y >= 0, y, y * slope)


def ref_blur(x):
    taps = torch.tensor([1.0, 2.0, 1.0])
    kernel = (taps[:, None] * taps[None, :] / 16).expand(x.shape[1], 1, 3, 3)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode='reflect'), kernel, stride=2, groups=x.shape[1])


def ref_conv_unit(x, sd, unit, slope):
    """conv2d_ABN, or Sequential(conv2d_ABN, anti-alias) when the keys are nested one level deeper."""
    if f'{unit}.0.0.weight' in sd:
        weight = sd[f'{unit}.0.0.weight']
        out = ref_abn(F.conv2d(x, weight, padding=weight.shape[-1] // 2), sd, f'{unit}.0.1', slope)
        return ref_blur(out)
    weight = sd[f'{unit}.0.weight']
    return ref_abn(F.conv2d(x, weight, padding=weight.shape[-1] // 2), sd, f'{unit}.1', slope)


def ref_se(x, sd, prefix):
    if f'{prefix}.fc1.weight' not in sd:
        return x
    pooled = x.mean((2, 3), keepdim=True)
    squeeze = F.relu(F.conv2d(pooled, sd[f'{prefix}.fc1.weight'], sd[f'{prefix}.fc1.bias']))
    return x * torch.sigmoid(F.conv2d(squeeze, sd[f'{prefix}.fc2.weight'], sd[f'{prefix}.fc2.bias']))


def ref_block(x, sd, p):
    if f'{p}.downsample.1.0.weight' in sd:  # stride 2: avg pool then 1x1 conv + ABN(identity)
        pooled = F.avg_pool2d(x, 2, 2, ceil_mode=True, count_include_pad=False)
        residual = ref_conv_unit(pooled, sd, f'{p}.downsample.1', None)
    elif f'{p}.downsample.0.0.weight' in sd:
        residual = ref_conv_unit(x, sd, f'{p}.downsample.0', None)
    else:
        residual = x
    out = ref_conv_unit(x, sd, f'{p}.conv1', 1e-3)
    if f'{p}.conv3.0.weight' in sd:  # bottleneck: SE sits between conv2 and conv3
        out = ref_se(ref_conv_unit(out, sd, f'{p}.conv2', 1e-3), sd, f'{p}.se')
        out = ref_conv_unit(out, sd, f'{p}.conv3', None)
    else:  # basic block: SE after conv2
        out = ref_se(ref_conv_unit(out, sd, f'{p}.conv2', None), sd, f'{p}.se')
    return F.relu(out + residual)


def ref_space_to_depth(images):
    n, c, h, w = images.shape
    blocks = images.reshape(n, c, h // 4, 4, w // 4, 4).permute(0, 3, 5, 1, 2, 4)  # (n, 4, 4, c, h/4, w/4)
    return blocks.reshape(n, c * 16, h // 4, w // 4)


def reference_forward(sd, images):
    x = ref_conv_unit(ref_space_to_depth(images), sd, 'body.conv1', 1e-2)
    for stage in range(1, 5):
        block = 0
        while any(f'body.layer{stage}.{block}.conv1.{sub}weight' in sd for sub in ('0.', '0.0.')):
            x = ref_block(x, sd, f'body.layer{stage}.{block}')
            block += 1
    pooled = x.mean((2, 3))
    if 'head.fc.FC.weight' in sd:
        embedding = F.linear(pooled, sd['head.fc.embedding_generator.0.weight'],
                             sd['head.fc.embedding_generator.0.bias'])
        return F.linear(embedding, sd['head.fc.FC.weight'], sd['head.fc.FC.bias'])
    return F.linear(pooled, sd['head.fc.weight'], sd['head.fc.bias'])


def save_paper_checkpoint(path, state_dict, num_classes, with_idx_to_class=True):
    payload = {'model': state_dict, 'num_classes': num_classes}
    if with_idx_to_class:
        payload['idx_to_class'] = {i: f'/m/{i:05d}' for i in range(num_classes)}
    torch.save(payload, path)
    return path


@pytest.fixture(scope='module')
def m_coco_original():
    return random_original_state_dict('tresnet_m_coco80', seed=1)


@pytest.fixture(scope='module')
def m_coco_model(m_coco_original):
    model = create_model(model_name='tresnet_m', num_classes=80).eval()
    load_state_dict_strict(model, convert_original_to_timm(m_coco_original))
    return model


def assert_close_to_reference(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


@pytest.fixture(scope='module')
def m_coco_file(tmp_path_factory, m_coco_original):
    path = tmp_path_factory.mktemp('ckpt') / 'mtresnet_coco.pth'
    return save_paper_checkpoint(path, m_coco_original, 80)


# ------------------------------------------------------------------------------------------- conversion
@pytest.mark.parametrize('manifest', list(MANIFESTS))
def test_every_manifest_converts_and_loads_strictly(manifest):
    expected_name, num_classes, bottleneck = MANIFESTS[manifest]
    original = random_original_state_dict(manifest, zero_weights=True)
    converted = convert_original_to_timm(original)
    # timm's own filter is a second implementation of the same mapping
    assert {k: v for k, v in checkpoint_filter_fn(dict(original), None).items()}.keys() == converted.keys()
    assert infer_tresnet_name(converted) == expected_name
    model = create_model(model_name=expected_name, num_classes=num_classes, do_bottleneck_head=bottleneck)
    assert set(model.state_dict()) == set(converted)
    load_state_dict_strict(model, converted)
    stem_bn = model.body.conv1.bn
    torch.testing.assert_close(stem_bn.weight.detach(), original['body.conv1.1.weight'].abs() + 1e-5)
    torch.testing.assert_close(stem_bn.running_var, original['body.conv1.1.running_var'])


def test_conversion_maps_anti_aliased_and_downsample_units():
    original = random_original_state_dict('tresnet_m_coco80', seed=1)
    converted = convert_original_to_timm(original)
    assert torch.equal(converted['body.layer2.0.conv1.conv.weight'],
                       original['body.layer2.0.conv1.0.0.weight'])
    assert torch.equal(converted['body.layer3.0.conv2.bn.bias'], original['body.layer3.0.conv2.0.1.bias'])
    assert torch.equal(converted['body.layer2.0.downsample.1.conv.weight'],
                       original['body.layer2.0.downsample.1.0.weight'])
    expected = original['body.layer2.0.downsample.1.1.weight'].abs() + 1e-5
    assert torch.equal(converted['body.layer2.0.downsample.1.bn.weight'], expected)
    assert torch.equal(converted['body.layer2.0.se.fc1.weight'], original['body.layer2.0.se.fc1.weight'])


# Blocks per stage of the paper's TResNet-M / -L (the L model is also 1.2x wider): the reference forward
# walks the blocks found in the state dict, so this pins down which architecture it really compared.
PAPER_STAGE_DEPTHS = {'tresnet_m': (3, 4, 11, 3), 'tresnet_l': (4, 5, 18, 3)}


def stage_depths(original: dict) -> tuple:
    return tuple(len({key.split('.')[2] for key in original if key.startswith(f'body.layer{stage}.')})
                 for stage in range(1, 5))


@pytest.mark.parametrize('manifest', ['tresnet_m_coco80', 'tresnet_l_coco80'])
def test_converted_tresnet_matches_paper_definition(manifest, request):
    name, num_classes, _ = MANIFESTS[manifest]
    if manifest == 'tresnet_m_coco80':  # shared with the other M tests
        original, model = request.getfixturevalue('m_coco_original'), request.getfixturevalue('m_coco_model')
    else:
        original = random_original_state_dict(manifest, seed=2)
        model = create_model(model_name=name, num_classes=num_classes).eval()
        load_state_dict_strict(model, convert_original_to_timm(original))
    assert stage_depths(original) == PAPER_STAGE_DEPTHS[name]
    assert original['body.conv1.0.weight'].shape[0] == {'tresnet_m': 64, 'tresnet_l': 76}[name]  # stem width
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(images)
        assert logits.shape == (2, num_classes)
        assert_close_to_reference(logits, reference_forward(original, images))


@pytest.mark.parametrize('manifest', ['tresnet_m_openimages9605', 'tresnet_l_openimages9605'])
def test_converted_bottleneck_tresnet_matches_paper_definition(manifest):
    name, num_classes, bottleneck = MANIFESTS[manifest]
    original = random_original_state_dict(manifest, seed=3)
    assert bottleneck and stage_depths(original) == PAPER_STAGE_DEPTHS[name]
    model = create_model(model_name=name, num_classes=num_classes, do_bottleneck_head=True).eval()
    load_state_dict_strict(model, convert_original_to_timm(original))
    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(images)
        assert logits.shape == (1, num_classes)
        assert_close_to_reference(logits, reference_forward(original, images))


def paper_activation_slope(unit: str, is_bottleneck_block: bool):
    """The paper's activation per conv unit: stem 1e-2; block conv1 (and bottleneck conv2) 1e-3; else none."""
    if unit == 'body.conv1':
        return 1e-2
    last = unit.split('.')[-1]
    if last == 'conv1' or (last == 'conv2' and is_bottleneck_block):
        return 1e-3
    return None  # basic conv2, bottleneck conv3, downsample


def test_every_conv_unit_matches_inplace_abn(m_coco_original, m_coco_model):
    """Per layer: conv + BN(|w|+eps) + the paper's activation (+ blur where anti-aliased)."""
    gen = torch.Generator().manual_seed(5)
    checked = 0
    for name, module in m_coco_model.named_modules():
        if type(module).__name__ != 'ConvNormAct':
            continue
        block = name.rsplit('.', 1)[0]  # same unit names in both layouts, e.g. body.layer2.0.downsample.1
        slope = paper_activation_slope(name, f'{block}.conv3.0.weight' in m_coco_original)
        x = torch.randn(1, module.conv.in_channels, 4, 4, generator=gen)
        with torch.no_grad():
            assert_close_to_reference(module(x), ref_conv_unit(x, m_coco_original, name, slope))
        checked += 1
    assert checked == 3 * 2 + 4 * 2 + 11 * 3 + 3 * 3 + 1 + 3  # block convs, stem, 3 downsamples
    # a wrong stem slope is visible at this level
    x = torch.randn(1, 48, 4, 4, generator=gen)
    with torch.no_grad():
        wrong = ref_conv_unit(x, m_coco_original, 'body.conv1', 1e-3)
        assert not torch.allclose(m_coco_model.body.conv1(x), wrong, atol=1e-4)


def test_loading_signed_abn_weights_without_abs_changes_outputs(m_coco_original, m_coco_model):
    """The full-forward equality is sensitive to the |w|+eps conversion."""
    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    # conversion keeps key order, so this pairs timm names with the unconverted (signed) ABN weights
    raw_weights = dict(zip(convert_original_to_timm(m_coco_original), m_coco_original.values()))
    model = copy.deepcopy(m_coco_model)
    load_state_dict_strict(model, raw_weights)
    with torch.no_grad():
        expected = reference_forward(m_coco_original, images)
        assert not torch.allclose(model(images), expected, rtol=1e-3, atol=1e-3 * expected.abs().max().item())


# ---------------------------------------------------------------------------------------------- factory
# tresnet_m and tresnet_l with both heads are built in test_every_manifest_converts_and_loads_strictly
@pytest.mark.parametrize('name,bottleneck', [('tresnet_xl', False), ('tresnet_v2_l', True),
                                             ('test_resnet', True)])
def test_factory_builds_each_name_and_head(name, bottleneck):
    model = create_model(model_name=name, num_classes=7, do_bottleneck_head=bottleneck)
    assert model_metadata(model) == {'model_name': name, 'num_classes': 7, 'do_bottleneck_head': bottleneck,
                                     'bottleneck_features': 512 if bottleneck else None,
                                     'boostlu_alpha': None, 'output_stride': None}
    classifier = model.get_submodule(model.pretrained_cfg['classifier'])
    if bottleneck:
        assert isinstance(classifier, BottleneckHead)
        assert classifier.embedding_generator[0].out_features == 512 and classifier.FC.out_features == 7
    else:
        assert isinstance(classifier, torch.nn.Linear) and classifier.out_features == 7
    if name == 'test_resnet':  # cheap enough to run: logits = FC(embedding(pooled features)), no activation
        model.eval()
        images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            pooled = model.forward_features(images).mean((2, 3))
            embedding = F.linear(pooled, classifier.embedding_generator[0].weight,
                                 classifier.embedding_generator[0].bias)
            expected = F.linear(embedding, classifier.FC.weight, classifier.FC.bias)
            torch.testing.assert_close(model(images), expected)
    else:  # the layout inference used by load_model recognises every TResNet variant
        assert infer_tresnet_name(model.state_dict()) == name


def to_original_layout(model) -> dict:
    """Hand-written inverse mapping (timm -> InPlaceABN layout, signed weights) for a layout round trip."""
    out = {}
    for name, module in model.named_modules():
        if type(module).__name__ == 'ConvNormAct':
            nested = '.0' if isinstance(getattr(module, 'aa', None), BlurPool2d) else ''
            out[f'{name}{nested}.0.weight'] = module.conv.weight.detach()
            for leaf, value in module.bn.state_dict().items():
                out[f'{name}{nested}.1.{leaf}'] = -value if leaf == 'weight' else value
    for key, value in model.state_dict().items():
        if '.se.' in key or key.startswith('head.'):
            out[key] = value
    return out


def test_v2_layout_converts_and_is_recognised():
    """TResNet-L-V2 (bottleneck stages 1-2, stride-1 shortcut 'downsample.0') in the paper's layout."""
    model = create_model(model_name='tresnet_v2_l', num_classes=4, do_bottleneck_head=True)
    original = to_original_layout(model)
    assert 'body.layer1.0.downsample.0.1.running_var' in original  # stride-1 shortcut, no avg pool
    assert 'body.layer2.0.conv2.0.0.weight' in original  # anti-aliased bottleneck conv2
    converted = convert_original_to_timm(original)
    assert infer_tresnet_name(converted) == 'tresnet_v2_l'
    expected = model.state_dict()
    assert set(converted) == set(expected)
    for key, value in converted.items():
        target = expected[key].abs() + 1e-5 if key.endswith('bn.weight') else expected[key]
        assert torch.equal(value, target), key


def test_paper_call_create_model_args_equals_the_keyword_form():
    """The paper's ``create_model(args)`` (strings as a command line gives them) builds the same model."""
    args = argparse.Namespace(model_name='TResNet_M', num_classes='80', do_bottleneck_head='true', lr=1e-4)
    torch.manual_seed(0)
    from_args = create_model(args)
    torch.manual_seed(0)
    from_kwargs = create_model(model_name='tresnet_m', num_classes=80, do_bottleneck_head=True)
    assert model_metadata(from_args) == model_metadata(from_kwargs)
    assert from_args.num_classes == 80 and isinstance(from_args.num_classes, int)
    state_a, state_b = from_args.state_dict(), from_kwargs.state_dict()
    assert list(state_a) == list(state_b)
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    with pytest.raises(TypeError, match=r"either the namespace or keywords"):
        create_model(args, model_name='test_resnet', num_classes=3)


@pytest.mark.parametrize('settings,bottleneck', [
    ({'dataset_type': 'openimages', 'do_bottleneck_head': None}, True),  # train.py's default
    ({'dataset_type': 'coco', 'do_bottleneck_head': None}, False),
    ({'dataset_type': 'openimages', 'do_bottleneck_head': False}, False),  # --no-do_bottleneck_head
    ({'dataset_type': 'lvis', 'do_bottleneck_head': True}, True),
    ({}, False),  # the paper's namespace: neither attribute
    ({'dataset_type': 'OpenImages'}, True),
])
def test_build_model_from_args_applies_the_openimages_head_rule(settings, bottleneck):
    args = argparse.Namespace(model_name='test_resnet', num_classes=3, **settings)
    model = build_model_from_args(args)
    assert model.do_bottleneck_head is bottleneck
    assert isinstance(model.fc, BottleneckHead if bottleneck else torch.nn.Linear)
    resolved = resolve_bottleneck_head(settings.get('do_bottleneck_head'), settings.get('dataset_type'))
    assert resolved is bottleneck


def test_build_model_from_args_reads_every_setting_and_dicts():
    args = {'model_name': 'test_resnet', 'num_classes': '5', 'grad_checkpointing': 'yes',
            'channels_last': True, 'drop_path_rate': '0.1', 'bottleneck_features': 16,
            'do_bottleneck_head': True}
    model = build_model_from_args(args)
    assert model_metadata(model) == {'model_name': 'test_resnet', 'num_classes': 5,
                                     'do_bottleneck_head': True, 'bottleneck_features': 16,
                                     'boostlu_alpha': None, 'output_stride': None}
    assert model.fc.embedding_generator[0].out_features == 16
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters() if p.dim() == 4)
    assert model.grad_checkpointing  # timm's flag: test_resnet is not a TResNet
    assert model.layer4[0].drop_path.drop_prob == pytest.approx(0.1)  # timm: linear ramp up to the rate
    with pytest.raises(ValueError, match='num_classes'):
        build_model_from_args(argparse.Namespace(model_name='test_resnet'))
    with pytest.raises(ValueError, match='do_bottleneck_head must be a boolean'):
        build_model_from_args({'model_name': 'test_resnet', 'num_classes': 2, 'do_bottleneck_head': 'maybe'})


@pytest.mark.parametrize('kwargs,error,message', [
    ({'model_name': 'tresnet_m'}, ValueError, 'num_classes'),
    ({'num_classes': 3}, ValueError, 'model_name'),
    ({'model_name': 'tresnet_m', 'num_classes': 'eighty'}, ValueError, 'num_classes'),
    ({'model_name': 'tresnet_m', 'num_classes': '80'}, ValueError, 'num_classes'),  # no string parsing
    ({'model_name': 'tresnet_m', 'num_classes': 0}, ValueError, 'num_classes'),
    ({'model_name': 'tresnet_m', 'num_classes': True}, ValueError, 'num_classes'),
    ({'model_name': 'no_such_net', 'num_classes': 3}, ValueError, 'no_such_net'),
    ({'model_name': 'tresnet_m', 'num_classes': 3, 'pretrained': True}, TypeError, 'pretrained'),
    ({'model_name': 'tresnet_m', 'num_classes': 3, 'do_bottleneck_head': 'maybe'}, ValueError,
     'do_bottleneck_head'),
    ({'model_name': 'tresnet_m', 'num_classes': 3, 'do_bottleneck_head': 'false'}, ValueError,
     'do_bottleneck_head must be True or False'),
    ({'model_name': 'tresnet_m', 'num_classes': 3, 'grad_checkpointing': 1}, ValueError,
     'grad_checkpointing'),
    ({'model_name': 'tresnet_m', 'num_classes': 3, 'drop_path_rate': 1.5}, ValueError, 'drop_path_rate'),
])
def test_factory_rejects_bad_settings(kwargs, error, message):
    with pytest.raises(error, match=message):
        create_model(**kwargs)


def test_grad_checkpointing_updates_batchnorm_once_and_keeps_gradients():
    torch.manual_seed(0)
    plain = TResNet(layers=[1, 1, 2, 1], num_classes=5, width_factor=0.25).train()  # tiny, same blocks
    checkpointed = copy.deepcopy(plain)
    timm_native = copy.deepcopy(plain)
    set_grad_checkpointing(checkpointed, True)
    timm_native.set_grad_checkpointing(True)
    assert isinstance(checkpointed.body.layer3, CheckpointedSequential)
    assert list(checkpointed.state_dict()) == list(plain.state_dict())
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    for model in (plain, checkpointed, timm_native):
        model(images).square().sum().backward()
    stats = {'plain': plain.state_dict(), 'ckpt': checkpointed.state_dict(), 'timm': timm_native.state_dict()}
    key = 'body.layer3.1.conv1.bn.running_mean'
    torch.testing.assert_close(stats['ckpt'][key], stats['plain'][key])
    assert stats['ckpt']['body.layer3.1.conv1.bn.num_batches_tracked'] == 1
    assert not torch.allclose(stats['timm'][key], stats['plain'][key])  # timm updates twice
    for name, param in plain.named_parameters():
        torch.testing.assert_close(checkpointed.get_parameter(name).grad, param.grad, rtol=1e-4, atol=1e-6)


def test_grad_checkpointing_option_survives_deepcopy_and_eval():
    torch.manual_seed(0)
    model = create_model(model_name='tresnet_m', num_classes=5, grad_checkpointing=True, channels_last=True)
    assert model.body.conv1.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert isinstance(model.body.layer3, CheckpointedSequential)
    plain = create_model(model_name='tresnet_m', num_classes=5)  # same weights, neither option
    plain.load_state_dict(model.state_dict())
    ema = copy.deepcopy(model).eval()
    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ema(images), plain.eval()(images))


def test_maybe_compile_only_on_cuda_and_warns_instead_of_printing(capsys):
    model = create_model(model_name='test_resnet', num_classes=4)
    with pytest.warns(UserWarning, match='torch.compile skipped: only used on CUDA'):
        assert maybe_compile(model, True, 'cpu') is model
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert maybe_compile(model, False, 'cpu') is model
    assert capsys.readouterr().out == ''


def test_check_model_classes_returns_a_note_instead_of_printing(capsys):
    names = ['cat', 'dog', 'car']
    assert check_model_classes(names, names, 'coco') is None
    assert check_model_classes(['class_0', 'class_1', 'class_2'], names, 'coco') is None  # no stored names
    note = check_model_classes(['/m/01', '/m/02', 'car'], names, 'the coco set')
    assert note == ("note: 2 of 3 class names of the checkpoint differ from those of the coco set "
                    "(e.g. '/m/01' vs 'cat'); assuming the same class order")
    assert capsys.readouterr().out == ''
    with pytest.raises(ValueError, match='predicts 2 classes but coco has 3'):
        check_model_classes(names[:2], names, 'coco')
    with pytest.raises(ValueError, match='in another order'):
        check_model_classes(['dog', 'cat', 'car'], names, 'coco')


# ---------------------------------------------------------------------------------------------- loading
def test_load_model_reads_paper_checkpoint_with_classes(m_coco_file, m_coco_model):
    model, class_names = load_model(m_coco_file)
    assert not model.training and model_metadata(model)['model_name'] == 'tresnet_m'
    assert class_names[:2] == ['/m/00000', '/m/00001'] and len(class_names) == 80
    expected = m_coco_model.state_dict()  # converted and checked against the reference above
    assert all(torch.equal(value, expected[key]) for key, value in model.state_dict().items())


def test_paper_layout_files_with_numpy_scalars_and_namespaces_load_without_unpickling(tmp_path,
                                                                                      m_coco_original):
    """The released files are {'model', 'num_classes', 'idx_to_class'}; some writers store numpy scalars,
    an OrderedDict and the argparse args. All of that loads with allow_pickle=False (the default), also
    in torch's legacy format with numpy 1.x module names; anything else is refused (test_bad_inputs_data)."""
    payload = {'model': collections.OrderedDict(m_coco_original), 'num_classes': np.int64(80),
               'idx_to_class': {np.int64(i): f'/m/{i:05d}' for i in range(80)}, 'epoch': np.int32(3),
               'mAP': np.float64(84.1),
               'args': argparse.Namespace(lr=np.float32(2e-4), model_name='tresnet_m')}
    torch.save(payload, tmp_path / 'zip.pth')
    legacy = io.BytesIO()
    torch.save(payload, legacy, _use_new_zipfile_serialization=False)
    numpy1 = legacy.getvalue().replace(b'numpy._core.multiarray\nscalar', b'numpy.core.multiarray\nscalar')
    assert numpy1 != legacy.getvalue()  # the file really names numpy 1.x's module
    (tmp_path / 'legacy.pth').write_bytes(numpy1)
    for name in ('zip.pth', 'legacy.pth'):
        with warnings.catch_warnings():
            warnings.simplefilter('error')  # no "loading with weights_only=False" warning
            model, class_names = load_model(tmp_path / name)
        assert class_names[:2] == ['/m/00000', '/m/00001'] and len(class_names) == 80
        expected = convert_original_to_timm(m_coco_original)
        assert all(torch.equal(value, expected[key]) for key, value in model.state_dict().items()
                   if not key.endswith('num_batches_tracked'))
        checkpoint = read_pth(tmp_path / name)
        assert checkpoint['epoch'] == 3 and checkpoint['args'].model_name == 'tresnet_m'


def test_load_model_bottleneck_file_with_ddp_prefix_and_old_buffers(tmp_path):
    original = random_original_state_dict('tresnet_m_openimages9605', seed=5)
    bare = {f'module.{k}': v for k, v in original.items() if not k.endswith('num_batches_tracked')}
    path = tmp_path / 'old.pth'
    torch.save({'state_dict': bare}, path)
    model, class_names = load_model(path)
    assert model.do_bottleneck_head and model.num_classes == 9605
    assert class_names[-1] == 'class_9604'
    torch.testing.assert_close(model.head.fc.FC.weight.detach(), original['head.fc.FC.weight'])
    with pytest.raises(CheckpointError, match="holds a tresnet_m .* 'tresnet_l'"):
        load_model(path, model_name='tresnet_l')


def test_extract_state_dict_accepts_wrappers():
    tensors = {'module.a.weight': torch.zeros(1)}
    assert list(extract_state_dict({'model': {'state_dict': tensors}})) == ['a.weight']
    assert list(extract_state_dict({'_orig_mod.a': torch.zeros(1)})) == ['a']
    ema = {'model': {'a': torch.zeros(1)}, 'ema': {'b': torch.ones(1)}}
    assert list(extract_state_dict(ema, use_ema=True)) == ['b']
    with pytest.raises(CheckpointError, match='no EMA weights'):
        extract_state_dict({'model': tensors}, use_ema=True)


def test_load_model_reads_our_checkpoint_with_ema(tmp_path):
    model = create_model(model_name='test_resnet', num_classes=3, do_bottleneck_head=True).eval()
    ema = copy.deepcopy(model)
    torch.nn.init.constant_(ema.fc.FC.bias, 5.0)
    path = tmp_path / 'ours.pth'
    torch.save({'model': model.state_dict(), 'ema': ema.state_dict(), **model_metadata(model),
                'class_names': ['cat', 'dog', 'car'], 'epoch': 2, 'args': argparse.Namespace(lr=1e-4)}, path)
    loaded, names = load_model(path)
    assert names == ['cat', 'dog', 'car'] and loaded.do_bottleneck_head
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), model(images))
        loaded_ema, _ = load_model(path, use_ema=True)
        torch.testing.assert_close(loaded_ema(images), ema(images))


def test_load_model_bad_files(tmp_path, m_coco_file):
    with pytest.raises(FileNotFoundError, match='not found'):
        load_model(tmp_path / 'missing.pth')
    (tmp_path / 'notes.txt').write_text('not a checkpoint')
    with pytest.raises(CheckpointError, match="notes.txt' is not a readable torch file"):
        load_model(tmp_path / 'notes.txt')
    torch.save(torch.zeros(3), tmp_path / 'tensor.pth')
    with pytest.raises(CheckpointError, match='holds no state dict'):
        load_model(tmp_path / 'tensor.pth')
    torch.save({'conv.weight': torch.zeros(2, 3, 3, 3)}, tmp_path / 'unknown.pth')
    with pytest.raises(CheckpointError, match='pass model_name'):
        load_model(tmp_path / 'unknown.pth')
    odd = convert_original_to_timm(random_original_state_dict('tresnet_m_coco80', zero_weights=True))
    odd = {k: v for k, v in odd.items() if not k.startswith('body.layer3.10.')}
    torch.save(odd, tmp_path / 'odd.pth')
    with pytest.raises(CheckpointError, match=r'blocks \[3, 4, 10, 3\].*matches none'):
        load_model(tmp_path / 'odd.pth')


# ------------------------------------------------------------------------------------ pretrained backbone
def test_load_pretrained_backbone_from_paper_layout(tmp_path, m_coco_original, capsys):
    imagenet = dict(m_coco_original)
    imagenet['head.fc.weight'] = torch.zeros(1000, 2048)
    imagenet['head.fc.bias'] = torch.zeros(1000)
    imagenet['body.layer4.2.conv3.0.weight'] = torch.zeros(5, 5, 1, 1)  # a shape that cannot fit
    path = tmp_path / 'imagenet.pth'
    torch.save({'model': imagenet}, path)
    model = create_model(model_name='tresnet_m', num_classes=80, do_bottleneck_head=True)
    head_before = model.head.fc.FC.weight.detach().clone()
    conv3_before = model.body.layer4[2].conv3.conv.weight.detach().clone()
    report = load_pretrained_backbone(model, path)
    assert capsys.readouterr().out == ''  # the caller prints str(report)
    assert str(report).startswith('pretrained backbone ') and 'loaded 431 tensors' in str(report)
    assert report.skipped_classifier == ['head.fc.weight', 'head.fc.bias']
    assert [s.split(':')[0] for s in report.skipped_shape] == ['body.layer4.2.conv3.conv.weight']
    assert report.missing == ['body.layer4.2.conv3.conv.weight']
    assert len(report.loaded) == len(m_coco_original) - 2 - 1
    torch.testing.assert_close(model.body.layer1[0].conv1.bn.weight.detach(),
                               m_coco_original['body.layer1.0.conv1.1.weight'].abs() + 1e-5)
    assert torch.equal(model.head.fc.FC.weight.detach(), head_before)
    assert torch.equal(model.body.layer4[2].conv3.conv.weight.detach(), conv3_before)


def test_load_pretrained_backbone_timm_layout_and_mismatch(tmp_path):
    source = timm.create_model('test_resnet', pretrained=False, num_classes=11)
    torch.save(source.state_dict(), tmp_path / 'timm.pth')
    model = create_model(model_name='test_resnet', num_classes=2)
    report = load_pretrained_backbone(model, tmp_path / 'timm.pth')
    assert report.skipped_classifier == ['fc.weight', 'fc.bias'] and not report.missing
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in source.state_dict().items() if not k.startswith('fc.'))
    tresnet = create_model(model_name='tresnet_m', num_classes=2)
    with pytest.raises(CheckpointError, match=r"timm.pth' does not hold a tresnet_m backbone: only 0 of"):
        load_pretrained_backbone(tresnet, tmp_path / 'timm.pth')
