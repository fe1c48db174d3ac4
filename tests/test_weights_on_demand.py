"""Weights on demand (src.models.hub): ``--model-path`` as a URL, a ``csl:`` alias or ``timm:<name>``.

Offline: URLs are ``file://`` URLs of checkpoints the tests write (read in place) or served by a localhost
HTTP server (downloaded), the torch hub cache is redirected to tmp_path with TORCH_HOME, timm reads a local
file through ``pretrained_cfg_overlay=dict(file=...)``, and a network failure is a connection to port 9 of
127.0.0.1 (refused at once).
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import http.server
import os
import re
import socket
import threading
import time

import pytest
import safetensors.torch
import timm
import torch
from huggingface_hub import constants as hf_constants

from src.models import (
    CSL_MODEL_ZOO,
    CheckpointError,
    CheckpointNotFoundError,
    WeightsDownloadError,
    WeightsSourceError,
    cached_download,
    create_model,
    hub,
    is_remote_weights,
    load_model,
    load_pretrained_backbone,
    parse_weights_spec,
    read_checkpoint,
    weights_stem,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = 'test_resnet'  # timm's 0.4 M-parameter test model; classifier at fc
NUM_CLASSES = 5
CLASS_NAMES = [f'label{i}' for i in range(NUM_CLASSES)]
# The paper's README (Alibaba-MIIL/PartialLabelingCSL, "Pretrained models"), copied by hand.
PAPER_URLS = {
    'mtresnet_opim_86.72': 'https://miil-public-eu.oss-eu-central-1.aliyuncs.com/model-zoo/CSL/opim_v6/'
                           'mtresnet_opim_86.72.pth',
    'ltresnet_v2_opim_87.34': 'https://miil-public-eu.oss-eu-central-1.aliyuncs.com/model-zoo/CSL/opim_v6/'
                              'ltresnet_v2_opim_87.34.pth',
    'mtresnet_opim_ignore': 'https://miil-public-eu.oss-eu-central-1.aliyuncs.com/model-zoo/CSL/opim_v6/'
                            'mtresnet_opim_ignore.pth',
    'mtresnet_opim_negative': 'https://miil-public-eu.oss-eu-central-1.aliyuncs.com/model-zoo/CSL/opim_v6/'
                              'mtresnet_opim_negative.pth',
}


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """The torch hub cache moved to tmp_path/torch_home (TORCH_HOME); returns its checkpoints folder."""
    monkeypatch.setattr(torch.hub, '_hub_dir', None)  # an earlier torch.hub.set_dir would win over TORCH_HOME
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    monkeypatch.setattr(hub, 'RETRY_WAIT_S', 0.0)
    return tmp_path / 'torch_home' / 'hub' / 'checkpoints'


@pytest.fixture
def tiny_checkpoint(tmp_path):
    """(path, state dict) of a train.py-style checkpoint of a 5-class test_resnet, outside the cache."""
    torch.manual_seed(0)
    model = create_model(model_name=TINY, num_classes=NUM_CLASSES)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    path = tmp_path / 'source' / 'tiny_ckpt.pth'
    path.parent.mkdir()
    torch.save({'model': state, 'model_name': TINY, 'num_classes': NUM_CLASSES, 'class_names': CLASS_NAMES},
               path)
    return path, state


@pytest.fixture
def no_network(tmp_path, monkeypatch):
    """Every connection refused (the reachability probe's too) and an empty Hugging Face cache in
    tmp_path/hf; returns that cache folder."""
    def refuse(*args, **kwargs):
        raise ConnectionRefusedError('no network in this test')

    monkeypatch.setattr(socket, 'create_connection', refuse)
    monkeypatch.setattr(hf_constants, 'HF_HUB_OFFLINE', False)
    monkeypatch.setattr(hf_constants, 'HF_HUB_CACHE', str(tmp_path / 'hf'))
    return tmp_path / 'hf'


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]  # free once closed: nothing listens there


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cache_files(folder) -> list[str]:
    """The file names anywhere under the cache folder (each URL has its own subfolder)."""
    return sorted(name for _, _, names in os.walk(folder) for name in names)


def _assert_same_tensors(actual: dict, expected: dict, keys=None):
    keys = list(expected) if keys is None else keys
    assert keys
    for key in keys:
        assert torch.equal(actual[key], expected[key]), key


# ----------------------------------------------------------------------------------------- parsing
@pytest.mark.parametrize('spec, kind, location', [
    ('./tresnet_m.pth', 'local', './tresnet_m.pth'),
    ('models/best.pth', 'local', 'models/best.pth'),
    ('C:\\weights\\m.pth', 'local', 'C:\\weights\\m.pth'),
    ('timm:tresnet_m.miil_in21k', 'timm', 'tresnet_m.miil_in21k'),
    ('https://example.org/w/m.pth', 'url', 'https://example.org/w/m.pth'),
    ('HTTP://example.org/m.pth', 'url', 'HTTP://example.org/m.pth'),
    ('file:///data/m.pth', 'url', 'file:///data/m.pth'),
    ('csl:mtresnet_opim_86.72', 'url', PAPER_URLS['mtresnet_opim_86.72']),
    ('csl:ltresnet_v2_opim_87.34.pth', 'url', PAPER_URLS['ltresnet_v2_opim_87.34']),
])
def test_parse_weights_spec_kinds(spec, kind, location):
    parsed = parse_weights_spec(spec)
    assert (parsed.kind, parsed.location, parsed.sha256) == (kind, location, None)
    assert is_remote_weights(spec) == (kind != 'local') == parsed.is_remote


def test_sha256_fragment_is_the_expected_hash_and_bad_fragments_are_refused():
    digest = 'ab' * 32
    parsed = parse_weights_spec(f'https://example.org/m.pth#sha256={digest.upper()}')
    assert (parsed.location, parsed.sha256) == ('https://example.org/m.pth', digest)
    with pytest.raises(WeightsSourceError, match=r'#sha256=<64 hex digits>.*not #md5=00'):
        parse_weights_spec('https://example.org/m.pth#md5=00')
    with pytest.raises(WeightsSourceError, match=r"'abc' is not a SHA-256 \(64 hex digits\)"):
        parse_weights_spec('https://example.org/m.pth#sha256=abc')
    with pytest.raises(WeightsSourceError, match=r'file:///abs/path/model.pth'):
        parse_weights_spec('file://relative/m.pth')
    with pytest.raises(WeightsSourceError, match='names no timm model'):
        parse_weights_spec('timm:')


def test_unknown_alias_names_the_known_ones():
    with pytest.raises(WeightsSourceError) as error:
        parse_weights_spec('csl:mtresnet_opim_86.7')
    message = str(error.value)
    assert 'did you mean csl:mtresnet_opim_86.72?' in message
    assert all(f'csl:{name}' in message for name in PAPER_URLS)


def test_weights_stem():
    assert weights_stem('outputs/run/best.pth') == 'best'
    assert weights_stem('https://example.org/zoo/m%2072.pth#sha256=' + '0' * 64) == 'm 72'
    assert weights_stem('csl:mtresnet_opim_ignore') == 'mtresnet_opim_ignore'
    assert weights_stem('timm:tresnet_m.miil_in21k') == 'timm_tresnet_m.miil_in21k'


# ------------------------------------------------------------------------------------ the paper's zoo
def test_alias_table_holds_the_papers_urls_and_the_docs_list_them():
    assert {name: entry.url for name, entry in CSL_MODEL_ZOO.items()} == PAPER_URLS
    assert CSL_MODEL_ZOO['ltresnet_v2_opim_87.34'].model_name == 'tresnet_v2_l'
    with open(os.path.join(REPO, 'docs', 'checkpoints.md'), encoding='utf-8') as handle:
        docs = handle.read()
    for name, entry in CSL_MODEL_ZOO.items():
        row = next((line for line in docs.splitlines() if line.startswith(f'| `csl:{name}` |')), None)
        assert row is not None, name
        assert entry.url in row and (entry.sha256 or 'not yet recorded') in row


# --------------------------------------------------------------------------------------- URLs
def test_url_is_downloaded_once_into_the_torch_hub_cache(hub_cache, tiny_checkpoint, http_server):
    source, state = tiny_checkpoint
    base, requests = http_server
    url = f'{base}/tiny_ckpt.pth'
    assert hub.default_cache_dir() == str(hub_cache)
    model, names = load_model(url, progress=False)
    assert names == CLASS_NAMES and model.num_classes == NUM_CLASSES
    _assert_same_tensors(model.state_dict(), state)
    copy = hub_cache / hashlib.sha256(url.encode()).hexdigest()[:16] / 'tiny_ckpt.pth'
    assert _cache_files(hub_cache) == ['tiny_ckpt.pth'] and hub.cache_path(url) == str(copy)
    assert copy.read_bytes() == source.read_bytes()

    source.unlink()  # a second download would now fail: the cached copy must be used
    again, _ = load_model(url, progress=False)
    _assert_same_tensors(again.state_dict(), state)
    cached = cached_download(url, progress=False)
    assert (cached.path, cached.downloaded) == (str(copy), False)
    assert requests == ['/tiny_ckpt.pth']


def _checkpoint_file(path, seed: int) -> dict:
    torch.manual_seed(seed)
    state = create_model(model_name=TINY, num_classes=NUM_CLASSES).state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({'model': state, 'model_name': TINY, 'num_classes': NUM_CLASSES}, path)
    return state


def test_two_runs_best_pth_load_as_themselves(hub_cache, tmp_path, http_server):
    """Every run writes best.pth: neither file:// nor http(s) sources may be confused by their file name."""
    base, requests = http_server
    states = {run: _checkpoint_file(tmp_path / 'source' / run / 'best.pth', seed)
              for seed, run in enumerate(('run_a', 'run_b'))}
    assert not torch.equal(states['run_a']['fc.weight'], states['run_b']['fc.weight'])
    for run, state in states.items():  # file://: read in place, nothing copied
        path = tmp_path / 'source' / run / 'best.pth'
        checkpoint, read_from = read_checkpoint(path.as_uri(), progress=False)
        assert read_from == str(path)
        _assert_same_tensors(checkpoint['model'], state)
    assert _cache_files(hub_cache) == []
    for run, state in states.items():  # http: one cached copy per URL
        model, _ = load_model(f'{base}/{run}/best.pth', progress=False)
        _assert_same_tensors(model.state_dict(), state)
    assert _cache_files(hub_cache) == ['best.pth', 'best.pth']
    assert requests == ['/run_a/best.pth', '/run_b/best.pth']
    for run, state in states.items():  # and again, from the cache
        checkpoint, read_from = read_checkpoint(f'{base}/{run}/best.pth', progress=False)
        assert read_from == hub.cache_path(f'{base}/{run}/best.pth')
        _assert_same_tensors(checkpoint['model'], state)
    assert len(requests) == 2


def test_file_url_is_read_in_place_and_its_sha256_checked(hub_cache, tiny_checkpoint, monkeypatch):
    source, state = tiny_checkpoint
    monkeypatch.setattr(hub, 'download', None)  # never called for a file:// URL
    model = create_model(model_name=TINY, num_classes=3)
    report = load_pretrained_backbone(model, f'{source.as_uri()}#sha256={_sha256(source)}', progress=False)
    assert report.source == str(source) and str(source) in str(report)
    assert report.skipped_classifier == ['fc.weight', 'fc.bias']
    _assert_same_tensors(model.state_dict(), state, report.loaded)
    assert len(report.loaded) == len(state) - 2
    wrong = '0' * 64
    with pytest.raises(WeightsDownloadError) as error:
        load_model(f'{source.as_uri()}#sha256={wrong}', progress=False)
    message = str(error.value)
    assert source.as_uri() in message and wrong in message and _sha256(source) in message
    assert source.is_file() and _cache_files(hub_cache) == []  # the user's file is never deleted


def test_url_with_the_right_sha256_loads_and_reports_the_cached_file(hub_cache, tiny_checkpoint, http_server):
    source, state = tiny_checkpoint
    base, _ = http_server
    url = f'{base}/tiny_ckpt.pth'
    model = create_model(model_name=TINY, num_classes=3)
    report = load_pretrained_backbone(model, f'{url}#sha256={_sha256(source)}', progress=False)
    assert report.source == hub.cache_path(url) and hub.cache_path(url) in str(report)
    assert report.skipped_classifier == ['fc.weight', 'fc.bias']
    _assert_same_tensors(model.state_dict(), state, report.loaded)


def test_wrong_sha256_is_an_error_with_both_hashes_and_leaves_no_file(hub_cache, tiny_checkpoint,
                                                                      http_server):
    source, _ = tiny_checkpoint
    base, _ = http_server
    wrong = '0' * 64
    url = f'{base}/tiny_ckpt.pth'
    with pytest.raises(WeightsDownloadError) as error:
        load_model(f'{url}#sha256={wrong}', progress=False)
    message = str(error.value)
    assert url in message and wrong in message and _sha256(source) in message
    assert _cache_files(hub_cache) == []

    # a copy already in the cache is checked too, and a mismatch removes it
    cached_download(url, progress=False)
    assert _cache_files(hub_cache) == ['tiny_ckpt.pth']
    with pytest.raises(WeightsDownloadError, match=f'checksum mismatch: sha256 {_sha256(source)}, expected '
                                                   f'{wrong}.*The file was deleted'):
        cached_download(url, wrong, progress=False)
    assert _cache_files(hub_cache) == []


def test_unreachable_url_fails_at_once_naming_where_to_put_the_file(hub_cache):
    model = create_model(model_name=TINY, num_classes=3)
    url = f'http://127.0.0.1:{_closed_port()}/tresnet_m.pth'
    start = time.monotonic()
    expected = (rf'could not download {re.escape(url)}: no network .*cannot be reached.*put it at '
                rf'{re.escape(str(hub_cache))}.*tresnet_m\.pth, or pass its local path')
    with pytest.raises(WeightsDownloadError, match=expected):
        load_pretrained_backbone(model, url, progress=False)
    assert time.monotonic() - start < 5  # no retries of a host that refuses
    assert _cache_files(hub_cache) == []


def test_alias_without_network_fails_fast_and_a_cached_copy_loads(hub_cache, tiny_checkpoint, no_network):
    source, state = tiny_checkpoint
    start = time.monotonic()
    with pytest.raises(WeightsDownloadError, match=r'no network .*put it at .*mtresnet_opim_ignore\.pth'):
        read_checkpoint('csl:mtresnet_opim_ignore', progress=False)
    assert time.monotonic() - start < 5
    cached = hub.cache_path(CSL_MODEL_ZOO['mtresnet_opim_ignore'].url)
    os.makedirs(os.path.dirname(cached))
    os.link(source, cached)
    model, _ = load_model('csl:mtresnet_opim_ignore', progress=False)
    _assert_same_tensors(model.state_dict(), state)


@pytest.fixture
def http_server(tmp_path):
    """(base URL, list of requested paths) of a local HTTP server of tmp_path/source (localhost only)."""
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server name
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    (tmp_path / 'source').mkdir(exist_ok=True)
    handler = functools.partial(Handler, directory=str(tmp_path / 'source'))
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f'http://127.0.0.1:{server.server_address[1]}', requests
    finally:
        server.shutdown()
        server.server_close()


def test_http_download_and_http_errors(hub_cache, tiny_checkpoint, http_server):
    source, state = tiny_checkpoint
    base, requests = http_server
    model, _ = load_model(f'{base}/tiny_ckpt.pth', progress=False)
    _assert_same_tensors(model.state_dict(), state)
    assert open(hub.cache_path(f'{base}/tiny_ckpt.pth'), 'rb').read() == source.read_bytes()
    with pytest.raises(WeightsDownloadError, match=rf'could not download {base}/absent\.pth: .*the server '
                                                   r'answered HTTP 404'):
        load_model(f'{base}/absent.pth', progress=False)
    assert _cache_files(hub_cache) == ['tiny_ckpt.pth']
    assert requests == ['/tiny_ckpt.pth', '/absent.pth']


def test_concurrent_processes_download_once(hub_cache, tiny_checkpoint, http_server):
    """DDP ranks: the cache folder lock lets one download while the others wait, then find the file."""
    source, _ = tiny_checkpoint
    base, requests = http_server
    results, errors = [], []

    def fetch():
        try:
            results.append(cached_download(f'{base}/tiny_ckpt.pth', _sha256(source), progress=False))
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=fetch) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert requests == ['/tiny_ckpt.pth']
    assert sorted(result.downloaded for result in results) == [False, False, False, True]
    assert _cache_files(hub_cache) == ['tiny_ckpt.pth']


def test_missing_file_url_names_the_url(hub_cache, tmp_path):
    url = (tmp_path / 'absent.pth').as_uri()
    with pytest.raises(WeightsDownloadError, match=f'{url}: there is no file'):
        load_model(url, progress=False)


def test_downloaded_files_get_the_same_safe_loader(hub_cache, tmp_path, tiny_checkpoint):
    _, state = tiny_checkpoint
    path = tmp_path / 'source' / 'with_object.pth'
    torch.save({'model': state, 'model_name': TINY, 'saved_on': datetime.date(2021, 10, 21)}, path)
    with pytest.raises(CheckpointError, match=r'datetime\.date.*--unsafe_pickle') as error:
        load_model(path.as_uri(), progress=False)
    assert path.as_uri() in str(error.value) and str(path) in str(error.value)
    with pytest.warns(UserWarning, match='weights_only=False'):
        model, _ = load_model(path.as_uri(), progress=False, allow_pickle=True)
    _assert_same_tensors(model.state_dict(), state)


# ------------------------------------------------------------------------------------- aliases
def test_alias_resolves_through_the_table(hub_cache, tiny_checkpoint, monkeypatch):
    source, state = tiny_checkpoint
    entry = hub.ZooEntry(source.as_uri(), _sha256(source), TINY, 'Selective (CSL)', 0.0)
    monkeypatch.setitem(CSL_MODEL_ZOO, 'mtresnet_opim_86.72', entry)
    model, names = load_model('csl:mtresnet_opim_86.72', progress=False)
    _assert_same_tensors(model.state_dict(), state)
    assert names == CLASS_NAMES
    assert _cache_files(hub_cache) == []  # a file:// entry is read in place
    # a plain URL that is in the table gets the table's hash
    assert parse_weights_spec(source.as_uri()).sha256 == _sha256(source)

    monkeypatch.setitem(CSL_MODEL_ZOO, 'mtresnet_opim_86.72', entry.__class__(
        source.as_uri(), 'f' * 64, TINY, 'Selective (CSL)', 0.0))
    with pytest.raises(WeightsDownloadError, match='expected ' + 'f' * 64):
        load_model('csl:mtresnet_opim_86.72', progress=False)
    assert source.is_file()


# ------------------------------------------------------------------------------------------- timm
@pytest.fixture
def timm_weights(tmp_path):
    """(path, state dict) of ImageNet-style test_resnet weights (1000 classes), saved as timm would."""
    torch.manual_seed(1)
    state = timm.create_model(TINY, pretrained=False).state_dict()
    path = tmp_path / 'test_resnet_weights.pth'
    torch.save(state, path)
    return path, state


def test_timm_weights_fill_the_backbone(timm_weights, hub_cache):
    path, state = timm_weights
    torch.manual_seed(2)
    model = create_model(model_name=TINY, num_classes=NUM_CLASSES)
    head_before = model.fc.weight.detach().clone()
    report = load_pretrained_backbone(model, f'timm:{TINY}', pretrained_cfg_overlay=dict(file=str(path)))
    backbone = [key for key in state if not key.startswith('fc.')]
    assert sorted(report.loaded) == sorted(backbone) and report.missing == []
    assert report.skipped_classifier == ['fc.weight', 'fc.bias']
    _assert_same_tensors(model.state_dict(), state, backbone)
    assert torch.equal(model.fc.weight, head_before)  # our 5-class head is kept
    assert report.path == f'timm:{TINY}' and str(path) in str(report)
    assert _cache_files(hub_cache) == []  # a local file: nothing downloaded


def test_timm_weights_as_a_whole_model(timm_weights):
    path, state = timm_weights
    model, names = load_model(f'timm:{TINY}', pretrained_cfg_overlay=dict(file=str(path)))
    _assert_same_tensors(model.state_dict(), state)
    assert model.model_name == TINY and model.num_classes == 1000 and not model.training
    assert len(names) == 1000 and names[0] == 'tench, Tinca tinca' and len(set(names)) == 1000


def test_read_checkpoint_of_timm_weights(timm_weights):
    path, state = timm_weights
    checkpoint, source = read_checkpoint(f'timm:{TINY}', pretrained_cfg_overlay=dict(file=str(path)))
    assert checkpoint['model_name'] == TINY and checkpoint['num_classes'] == 1000
    assert str(path) in source
    _assert_same_tensors(checkpoint['model'], state)


def test_the_papers_backbone_by_timm_name(tmp_path):
    """timm:tresnet_m.miil_in21k (11,221 classes) into the paper's OpenImages TResNet-M: every backbone
    tensor is copied; weights written by the test stand in for timm's download."""
    torch.manual_seed(3)
    source = timm.create_model('tresnet_m.miil_in21k', pretrained=False)
    assert source.num_classes == 11221
    path = tmp_path / 'tresnet_m_miil_in21k.pth'
    torch.save(source.state_dict(), path)
    model = create_model(model_name='tresnet_m', num_classes=80, do_bottleneck_head=True)
    report = load_pretrained_backbone(model, 'timm:tresnet_m.miil_in21k',
                                      pretrained_cfg_overlay=dict(file=str(path)))
    assert report.missing == [] and report.skipped_shape == [] and report.skipped_unexpected == []
    assert report.skipped_classifier == ['head.fc.weight', 'head.fc.bias']
    backbone = [key for key in source.state_dict() if not key.startswith('head.fc.')]
    _assert_same_tensors(model.state_dict(), source.state_dict(), backbone)
    assert str(report).startswith(f'pretrained backbone timm:tresnet_m.miil_in21k (timm, file {path}): '
                                  f'loaded {len(backbone)} tensors')


@pytest.mark.parametrize('spec, expected', [
    ('timm:tresnet_mm', r"timm .* has no model 'tresnet_mm'; did you mean timm:tresnet_m"),
    ('timm:tresnet_m.nosuch', r"no pretrained tag 'nosuch' for tresnet_m; available: .*"
                              r"timm:tresnet_m\.miil_in21k"),
    ('timm:botnet50ts_256', r'no pretrained weights for botnet50ts_256'),
])
def test_unknown_timm_names_are_clear_errors(spec, expected):
    model = create_model(model_name=TINY, num_classes=3)
    with pytest.raises(WeightsSourceError, match=expected):
        load_pretrained_backbone(model, spec)


def test_timm_download_failure_is_a_clear_error(hub_cache, http_server):
    url = f'{http_server[0]}/test_resnet.pth'  # the host answers, the file is not there
    with pytest.raises(WeightsDownloadError, match=rf"'timm:test_resnet': timm could not load its pretrained "
                                                   rf'weights from URL {url} \(HTTPError'):
        load_model(f'timm:{TINY}', pretrained_cfg_overlay=dict(hf_hub_id=None, url=url))


def test_timm_hub_weights_without_network_fail_fast_naming_the_fix(no_network):
    start = time.monotonic()
    expected = (r"'timm:test_resnet\.r160_in1k': no network \(huggingface\.co.*cannot be reached.*not in its "
                rf'cache {re.escape(str(no_network))}.*Fetch them once where there is network.*--model-path')
    with pytest.raises(WeightsDownloadError, match=expected):
        load_model('timm:test_resnet.r160_in1k')
    assert time.monotonic() - start < 5
    assert hf_constants.HF_HUB_OFFLINE is False  # offline mode only for that call


def test_timm_hub_weights_cached_load_without_network(no_network):
    """The Hugging Face cache layout (refs/main -> snapshots/<commit>/model.safetensors), written by hand."""
    torch.manual_seed(4)
    state = timm.create_model(TINY, pretrained=False).state_dict()
    repo = no_network / 'models--timm--test_resnet.r160_in1k'
    commit = 'a' * 40
    (repo / 'snapshots' / commit).mkdir(parents=True)
    (repo / 'refs').mkdir()
    (repo / 'refs' / 'main').write_text(commit)
    safetensors.torch.save_file(state, str(repo / 'snapshots' / commit / 'model.safetensors'))
    start = time.monotonic()
    model, _ = load_model('timm:test_resnet.r160_in1k')
    assert time.monotonic() - start < 5
    _assert_same_tensors(model.state_dict(), state)


def test_timm_url_weights_without_network_fail_fast_unless_cached(hub_cache, timm_weights, no_network):
    path, state = timm_weights
    overlay = dict(hf_hub_id=None, url='https://example.org/w/test_resnet.pth')
    start = time.monotonic()
    with pytest.raises(WeightsDownloadError, match=r'no network \(example\.org:443 cannot be reached.*not in '
                                                   r'its cache .*torch_home.*URL https://example\.org'):
        load_model(f'timm:{TINY}', pretrained_cfg_overlay=overlay)
    assert time.monotonic() - start < 5
    hub_cache.mkdir(parents=True)
    os.link(path, hub_cache / 'test_resnet.pth')  # where timm keeps what it downloads by URL
    model, _ = load_model(f'timm:{TINY}', pretrained_cfg_overlay=overlay)
    _assert_same_tensors(model.state_dict(), state)


# ------------------------------------------------------------------------------ local paths unchanged
def test_local_paths_never_download(tmp_path, monkeypatch, tiny_checkpoint):
    def no_download(*args, **kwargs):
        raise AssertionError('a local path must not download')

    monkeypatch.setattr(hub, 'download', no_download)
    source, state = tiny_checkpoint
    for spec in (source, source.as_uri()):
        model, _ = load_model(spec)
        _assert_same_tensors(model.state_dict(), state)
    missing = tmp_path / 'https_like' / 'tresnet_m.pth'
    with pytest.raises(CheckpointNotFoundError, match=r"checkpoint file not found: .*tresnet_m\.pth.*"
                                                      r'check --model-path'):
        load_model(missing)
    with pytest.raises(CheckpointNotFoundError):
        load_pretrained_backbone(create_model(model_name=TINY, num_classes=3), str(missing))
