"""Weights on demand: ``--model-path`` may be a local path, ``timm:<name>`` (timm's pretrained weights and
cache), a ``file://`` URL (read in place, never cached: every run's file is ``best.pth``), an ``http(s)://``
URL (downloaded once into the torch hub cache, keyed by the whole URL) or ``csl:<name>`` (the paper's
released models). An optional ``#sha256=<hex>`` fragment is checked on every use. docs/checkpoints.md."""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import os
import re
import socket
import sys
import threading
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import timm
import timm.models
import torch
from huggingface_hub import constants as hf_constants
from timm.data import ImageNetInfo, infer_imagenet_subset
from tqdm import tqdm

from src.utils.download import DownloadError, download, hash_file

try:
    import fcntl
except ImportError:  # not POSIX: downloads are not serialised between processes
    fcntl = None

TIMM_PREFIX = 'timm:'
ALIAS_PREFIX = 'csl:'
URL_SCHEMES = ('http', 'https', 'file')
DOWNLOAD_RETRIES = 2  # network errors retried this many times (each continues the .part file)
RETRY_WAIT_S = 3.0
PROBE_TIMEOUT_S = 2.0  # a weights host that accepts no connection in this time counts as unreachable
_SHA256 = re.compile(r'[0-9a-fA-F]{64}')

# Where the paper's README (Alibaba-MIIL/PartialLabelingCSL, "Pretrained models") serves its OpenImages V6
# models. SHA-256: None until someone with network access records it (docs/checkpoints.md says how).
CSL_ZOO_BASE_URL = 'https://miil-public-eu.oss-eu-central-1.aliyuncs.com/model-zoo/CSL/opim_v6/'


@dataclass(frozen=True)
class ZooEntry:
    """A released model of the paper; ``sha256`` None: not yet recorded; ``map``: OpenImages V6 mAP."""

    url: str
    sha256: str | None
    model_name: str
    loss: str
    map: float


CSL_MODEL_ZOO: dict[str, ZooEntry] = {
    'mtresnet_opim_86.72': ZooEntry(CSL_ZOO_BASE_URL + 'mtresnet_opim_86.72.pth', None, 'tresnet_m',
                                    'Selective (CSL)', 86.72),
    'ltresnet_v2_opim_87.34': ZooEntry(CSL_ZOO_BASE_URL + 'ltresnet_v2_opim_87.34.pth', None, 'tresnet_v2_l',
                                       'Selective (CSL)', 87.34),
    'mtresnet_opim_ignore': ZooEntry(CSL_ZOO_BASE_URL + 'mtresnet_opim_ignore.pth', None, 'tresnet_m',
                                     'Ignore', 85.38),
    'mtresnet_opim_negative': ZooEntry(CSL_ZOO_BASE_URL + 'mtresnet_opim_negative.pth', None, 'tresnet_m',
                                       'Negative', 85.85),
}


class WeightsSourceError(ValueError):
    """A ``--model-path`` value that names no usable source of weights."""


class WeightsDownloadError(WeightsSourceError):
    """Weights that could not be fetched, or whose SHA-256 is wrong."""


@dataclass(frozen=True)
class WeightsSpec:
    """``kind``: 'local', 'url' or 'timm'; ``location``: the path, URL (no fragment) or timm name."""

    spec: str
    kind: str
    location: str
    sha256: str | None = None

    @property
    def is_remote(self) -> bool:
        return self.kind != 'local'


@dataclass(frozen=True)
class CachedFile:
    """``downloaded``: False when the file was there already."""

    path: str
    downloaded: bool


def _check_sha256(value: str, where: str) -> str:
    if not _SHA256.fullmatch(value):
        raise WeightsSourceError(f'{where}: {value!r} is not a SHA-256 (64 hex digits); fix it or leave '
                                 'it out')
    return value.lower()


def _split_fragment(url: str, spec: str) -> tuple[str, str | None]:
    base, _, fragment = url.partition('#')
    if not fragment:
        return base, None
    key, _, value = fragment.partition('=')
    if key.lower() != 'sha256':
        raise WeightsSourceError(f'--model-path {spec!r}: the only URL fragment understood is '
                                 f'#sha256=<64 hex digits> (the expected SHA-256), not #{fragment}')
    return base, _check_sha256(value, f'--model-path {spec!r}')


def parse_weights_spec(spec) -> WeightsSpec:
    """Only the ``timm:`` / ``csl:`` prefixes and URL schemes are special: anything else is a local path."""
    text = os.fspath(spec)
    if text.startswith(TIMM_PREFIX):
        name = text[len(TIMM_PREFIX):].strip()
        if not name:
            raise WeightsSourceError(f'--model-path {text!r} names no timm model; pass e.g. '
                                     'timm:tresnet_m.miil_in21k')
        return WeightsSpec(text, 'timm', name)
    if text.startswith(ALIAS_PREFIX):
        name = text[len(ALIAS_PREFIX):].strip().removesuffix('.pth')
        entry = CSL_MODEL_ZOO.get(name)
        if entry is None:
            close = difflib.get_close_matches(name, list(CSL_MODEL_ZOO), n=1)
            hint = f'did you mean {ALIAS_PREFIX}{close[0]}? ' if close else ''
            known = ', '.join(ALIAS_PREFIX + n for n in CSL_MODEL_ZOO)
            raise WeightsSourceError(f'--model-path {text!r} is not one of the paper\'s models; {hint}known: '
                                     f'{known} (docs/checkpoints.md)')
        url, fragment_sha = _split_fragment(entry.url, text)
        sha = _check_sha256(entry.sha256, f'CSL_MODEL_ZOO[{name!r}]') if entry.sha256 else fragment_sha
        return WeightsSpec(text, 'url', url, sha)
    parsed = urllib.parse.urlparse(text)
    if parsed.scheme.lower() in URL_SCHEMES and '://' in text:
        if parsed.scheme.lower() == 'file' and parsed.netloc not in ('', 'localhost'):
            raise WeightsSourceError(f'--model-path {text!r}: a file:// URL needs an absolute path, e.g. '
                                     f'file:///abs/path/model.pth (or pass the path itself)')
        url, sha = _split_fragment(text, text)
        zoo_sha = next((e.sha256 for e in CSL_MODEL_ZOO.values() if e.sha256 and e.url == url), None)
        return WeightsSpec(text, 'url', url, sha or zoo_sha)
    return WeightsSpec(text, 'local', text)


def is_remote_weights(spec) -> bool:
    """True for ``timm:``, ``csl:`` and URL values (no local-file check for these). Never raises."""
    text = os.fspath(spec)
    return (text.startswith((TIMM_PREFIX, ALIAS_PREFIX))
            or ('://' in text and urllib.parse.urlparse(text).scheme.lower() in URL_SCHEMES))


def weights_stem(spec) -> str:
    """A file-name stem for outputs named after the weights (``timm_<name>`` for timm weights)."""
    text = os.fspath(spec)
    if text.startswith(TIMM_PREFIX):
        return 'timm_' + re.sub(r'[^\w.-]', '_', text[len(TIMM_PREFIX):].strip())
    if text.startswith(ALIAS_PREFIX):
        return text[len(ALIAS_PREFIX):].strip().removesuffix('.pth')
    if is_remote_weights(text):
        text = urllib.parse.unquote(urllib.parse.urlparse(text).path)
    return os.path.splitext(os.path.basename(text))[0]


def default_cache_dir() -> str:
    """``$TORCH_HOME/hub/checkpoints``, as torch.hub and timm use."""
    return os.path.join(torch.hub.get_dir(), 'checkpoints')


def cache_path(url: str) -> str:
    """``<cache>/<16 hex digits of the URL's SHA-256>/<file name>``: two URLs never share a copy."""
    name = os.path.basename(urllib.parse.unquote(urllib.parse.urlparse(url).path))
    if not name:
        raise WeightsSourceError(f'--model-path {url!r} names no file (the URL path ends in "/"); pass the '
                                 'URL of the .pth file itself')
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    return os.path.join(os.path.abspath(default_cache_dir()), key, name)


def _unreachable_host(url: str) -> str | None:
    """None when ``url``'s host (or its proxy) accepts a TCP connection within ``PROBE_TIMEOUT_S``, else
    why not. Probed in a thread so that a hanging DNS lookup is bounded too."""
    parsed = urllib.parse.urlparse(url)
    host, port = parsed.hostname, parsed.port or (80 if parsed.scheme.lower() == 'http' else 443)
    proxy = urllib.request.getproxies().get(parsed.scheme.lower())
    if proxy and not urllib.request.proxy_bypass(host):
        proxy = urllib.parse.urlparse(proxy if '://' in proxy else 'http://' + proxy)
        host, port = proxy.hostname, proxy.port or 80
    reached = []

    def probe() -> None:
        with contextlib.suppress(OSError):
            socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
            reached.append(True)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(PROBE_TIMEOUT_S + 1)
    return None if reached else f'{host}:{port} cannot be reached'


@contextlib.contextmanager
def _hf_hub_offline(offline: bool) -> Iterator[None]:
    """HF_HUB_OFFLINE=1 for one call (huggingface_hub reads the variable once, at import)."""
    before = hf_constants.HF_HUB_OFFLINE
    hf_constants.HF_HUB_OFFLINE = before or offline
    try:
        yield
    finally:
        hf_constants.HF_HUB_OFFLINE = before


@contextlib.contextmanager
def _folder_lock(folder: str) -> Iterator[None]:
    """flock of the folder itself (no lock file is left): DDP ranks download once."""
    if fcntl is None:
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def cached_download(url: str, sha256: str | None = None, *, progress: bool = True) -> CachedFile:
    """The local file behind ``url``: a ``file://`` URL's own file, else its copy at `cache_path`,
    downloaded if absent. A SHA-256 mismatch deletes the copy, never a source file."""
    url, fragment_sha = _split_fragment(url, url)
    if sha256 is not None:
        sha256 = _check_sha256(sha256, f'expected SHA-256 of {url}')
        if fragment_sha is not None and fragment_sha != sha256:
            raise WeightsSourceError(f'{url}: two different expected SHA-256 given ({sha256} and the URL '
                                     f'fragment\'s {fragment_sha}); keep one')
    expected = sha256 or fragment_sha
    dest = cache_path(url)
    hint = ('check the URL (and its expected SHA-256: #sha256=... or the csl: table in docs/checkpoints.md) '
            'and the network, or download the file yourself and pass its path')
    if urllib.parse.urlparse(url).scheme.lower() == 'file':
        path = urllib.request.url2pathname(urllib.parse.urlparse(url).path)
        if not os.path.isfile(path):
            raise WeightsDownloadError(f'--model-path {url}: there is no file {path}; fix the URL or pass '
                                       'the local path itself')
        actual = hash_file(path, 'sha256').hexdigest() if expected else None
        if actual != expected:
            raise WeightsDownloadError(f'--model-path {url}: SHA-256 mismatch: the file has {actual}, '
                                       f'expected {expected}; {hint}')
        return CachedFile(path, downloaded=False)

    unreachable = None if os.path.isfile(dest) else _unreachable_host(url)
    if unreachable:
        raise WeightsDownloadError(f'could not download {url}: no network ({unreachable}) and no copy is '
                                   f'cached. Download the file where there is network and put it at {dest}, '
                                   'or pass its local path')

    def note(message: str) -> None:  # download()'s resume / retry notes: stderr, beside the progress bar
        if progress:
            tqdm.write(f'note: {message}', file=sys.stderr)

    try:
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with _folder_lock(os.path.dirname(dest)):
            present = os.path.isfile(dest)
            download(url, dest, checksum=f'sha256:{expected}' if expected else None, progress=progress,
                     retries=DOWNLOAD_RETRIES, retry_wait=RETRY_WAIT_S, log=note, keep_bad=False, hint=hint)
    except DownloadError as error:
        raise WeightsDownloadError(f'could not download {url}: {error}') from error
    except OSError as error:  # the cache folder: disk full, permissions
        raise WeightsDownloadError(f'could not download {url} into {dest} ({error}); free space or set '
                                   'TORCH_HOME to a writable folder') from error
    return CachedFile(dest, downloaded=not present)


# ---------------------------------------------------------------------------------------------- timm
def _timm_cfg(name: str, spec: str) -> tuple[str, dict]:
    arch, tag = timm.models.split_model_name_tag(name)
    if not timm.models.is_model(arch):
        close = difflib.get_close_matches(name, timm.list_pretrained(), n=3, cutoff=0.6)
        hint = f'did you mean {", ".join(TIMM_PREFIX + c for c in close)}? ' if close else ''
        raise WeightsSourceError(f'--model-path {spec!r}: timm {timm.__version__} has no model {arch!r}; '
                                 f'{hint}timm.list_pretrained("tresnet*") lists the names with weights')
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError:  # an unknown tag
        cfg = None
    if cfg is None:
        tags = timm.list_pretrained(f'{arch}.*')
        raise WeightsSourceError(f'--model-path {spec!r}: timm has no pretrained tag {tag!r} for {arch}; '
                                 f'available: {", ".join(TIMM_PREFIX + t for t in tags) or "none"}')
    return arch, cfg.to_dict()


def _timm_class_names(cfg: Mapping, num_classes: int) -> list[str] | None:
    """ImageNet class descriptions (a duplicated description gets its synset id)."""
    try:
        subset = infer_imagenet_subset(dict(cfg))
        if not subset:
            return None
        info = ImageNetInfo(subset)
        names, descriptions = info.label_names(), info.label_descriptions()
    except Exception:  # noqa: BLE001 - names are a nicety: fall back to class_<i>
        return None
    if len(descriptions) != num_classes:
        return None
    counts = Counter(descriptions)
    return [d if counts[d] == 1 else f'{d} ({n})' for d, n in zip(descriptions, names)]


def timm_pretrained_checkpoint(name: str, *, pretrained_cfg_overlay: Mapping | None = None,
                               spec: str | None = None) -> dict:
    """timm's pretrained weights of ``name`` (e.g. ``tresnet_m.miil_in21k``) as a checkpoint dict like ours,
    plus ``source``. ``pretrained_cfg_overlay`` goes to ``timm.create_model``, e.g. ``dict(file=<path>)``."""
    spec = spec or TIMM_PREFIX + name
    arch, cfg = _timm_cfg(name, spec)
    overlay = dict(pretrained_cfg_overlay or {})
    cfg.update(overlay)
    sources = [(key, cfg.get(key)) for key in ('state_dict', 'file', 'hf_hub_id', 'url') if cfg.get(key)]
    if not sources:
        tags = timm.list_pretrained(f'{arch}.*')
        raise WeightsSourceError(f'--model-path {spec!r}: timm has no pretrained weights for {name} '
                                 f'(tag {cfg.get("tag")!r}); use one with weights: '
                                 f'{", ".join(TIMM_PREFIX + t for t in tags) or "none for " + arch}')
    key, where = sources[0]
    labels = {'file': 'file', 'hf_hub_id': 'Hugging Face hub', 'url': 'URL'}
    source = 'a state dict' if key == 'state_dict' else f'{labels[key]} {where}'
    # Without network, fail at once (the hub retries for ~50 s) unless a cached copy exists.
    offline, cache = None, default_cache_dir()
    if key == 'hf_hub_id':
        cache = hf_constants.HF_HUB_CACHE
        offline = ('HF_HUB_OFFLINE is set' if hf_constants.HF_HUB_OFFLINE else
                   _unreachable_host(hf_constants.ENDPOINT))
    elif key == 'url' and not os.path.isfile(os.path.join(cache, os.path.basename(where.split('?')[0]))):
        offline = _unreachable_host(where)
    no_network = (f'--model-path {spec!r}: no network ({offline}) and timm\'s weights of {name} are not in '
                  f'its cache {cache}: timm needs to download them from {source}. Fetch them once where '
                  'there is network (the same command, or python -c "import timm; timm.create_model('
                  f'\'{name}\', pretrained=True)") and copy that cache here (HF_HOME / TORCH_HOME move it; a '
                  'cached copy is used offline), or save the weights as a .pth and pass --model-path FILE')
    if offline and key == 'url':
        raise WeightsDownloadError(no_network)
    try:
        with _hf_hub_offline(bool(offline)):
            model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay or None)
    except Exception as error:  # noqa: BLE001 - hub, network and file errors of many kinds
        if offline:
            raise WeightsDownloadError(no_network) from error
        first_line = str(error).splitlines()[0] if str(error) else ''
        fix = ('check that the file holds the weights of this model' if key in ('file', 'state_dict') else
               'Check the network (timm keeps them in the Hugging Face cache, HF_HOME, or the torch hub '
               'cache, TORCH_HOME; HF_HUB_OFFLINE=1 uses the cache only), or download the weights yourself '
               'and pass the file path')
        raise WeightsDownloadError(f'--model-path {spec!r}: timm could not load its pretrained weights from '
                                   f'{source} ({type(error).__name__}: {first_line}). {fix}') from error
    num_classes = int(getattr(model, 'num_classes', 0) or cfg.get('num_classes') or 0)
    checkpoint = {'model': model.state_dict(), 'model_name': arch, 'source': f'timm, {source}'}
    if num_classes:
        checkpoint['num_classes'] = num_classes
        names = _timm_class_names(cfg, num_classes)
        if names is not None:
            checkpoint['class_names'] = names
    return checkpoint

