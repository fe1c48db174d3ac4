"""Training-step speed and peak memory of a TResNet: forward + backward, images/s and MiB.

Grid: image size x gradient checkpointing x channels_last (defaults: tresnet_m, batch 8, sizes 224 and
448). Every configuration runs in its own subprocess so that its peak memory is its own:
- CPU: peak resident set size (``ru_maxrss``) after the timed steps minus the RSS before the first step,
  i.e. activations + gradients + allocator overhead (the model weights are in the baseline);
- CUDA: ``torch.cuda.max_memory_allocated`` during the steps (weights included), with AMP (float16
  autocast + GradScaler), as the paper trains.
Throughput = batch / fastest of the ``--iters`` timed steps (after ``--warmup`` untimed ones); the
fastest step is the least disturbed by other processes on a shared CPU; the mean is reported too.

Run: ``python bench/bench_model.py [--sizes 224 448] [--iters 2]``; ``main()`` returns the rows and
writes them to bench/results/bench_model.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from src.models import create_model  # noqa: E402  (after the sys.path insert: run as bench/x.py)


def _rss_mib() -> float:
    """Current resident set size (Linux /proc), MiB."""
    with open('/proc/self/statm') as handle:
        pages = int(handle.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def run_config(config: dict) -> dict:
    """One configuration in this process: returns images/s and peak memory (see module docstring)."""
    import torch
    import torch.nn.functional as F

    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    torch.manual_seed(0)
    model = create_model(model_name=config['model'], num_classes=80,
                         grad_checkpointing=config['grad_checkpointing'],
                         channels_last=config['channels_last']).to(device).train()
    memory_format = torch.channels_last if config['channels_last'] else torch.contiguous_format
    images = torch.rand(config['batch'], 3, config['size'], config['size'], device=device)
    images = images.contiguous(memory_format=memory_format)
    targets = torch.zeros(config['batch'], 80, device=device)
    use_amp = device.type == 'cuda'
    scaler = torch.amp.GradScaler('cuda', enabled=use_amp)

    def step():
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            loss = F.binary_cross_entropy_with_logits(model(images).float(), targets)
        scaler.scale(loss).backward()
        model.zero_grad(set_to_none=True)

    baseline = _rss_mib()
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    for _ in range(config['warmup']):
        step()
    step_times = []
    for _ in range(config['iters']):
        if device.type == 'cuda':
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == 'cuda':
            torch.cuda.synchronize()
        step_times.append(time.perf_counter() - start)
    best = min(step_times)
    if device.type == 'cuda':
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - baseline  # ru_maxrss is KiB
    return {**config, 'device': str(device), 'amp': use_amp, 'threads': torch.get_num_threads(),
            'images_per_s': round(config['batch'] / best, 3), 'best_sec_per_step': round(best, 3),
            'mean_sec_per_step': round(sum(step_times) / len(step_times), 3), 'peak_mem_mib': round(peak, 1)}


def _run_in_subprocess(config: dict) -> dict:
    completed = subprocess.run([sys.executable, __file__, '--worker', json.dumps(config)],
                               capture_output=True, text=True, cwd=REPO_ROOT)
    if completed.returncode != 0:
        raise RuntimeError(f'benchmark worker failed for {config}:\n{completed.stderr[-2000:]}')
    return json.loads(completed.stdout.strip().splitlines()[-1])


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', default='tresnet_m')
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--sizes', type=int, nargs='+', default=[224, 448])
    parser.add_argument('--iters', type=int, default=3)
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--out', default=str(REPO_ROOT / 'bench' / 'results' / 'bench_model.json'))
    parser.add_argument('--worker', help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(run_config(json.loads(args.worker))))
        return []
    rows = []
    columns = ('size', 'ckpt', 'ch_last', 'img/s', 'best s', 'mean s', 'peak MiB')
    print(' '.join(f'{c:>{w}}' for c, w in zip(columns, (5, 5, 7, 8, 7, 7, 9))) + '  device')
    for size, ckpt, channels_last in itertools.product(args.sizes, (False, True), (False, True)):
        config = {'model': args.model, 'batch': args.batch, 'size': size, 'grad_checkpointing': ckpt,
                  'channels_last': channels_last, 'iters': args.iters, 'warmup': args.warmup}
        row = _run_in_subprocess(config)
        rows.append(row)
        print(f'{size:>5} {ckpt!s:>5} {channels_last!s:>7} {row["images_per_s"]:>8.2f} '
              f'{row["best_sec_per_step"]:>7.2f} {row["mean_sec_per_step"]:>7.2f} '
              f'{row["peak_mem_mib"]:>9.1f}  {row["device"]}{" amp" if row["amp"] else ""}', flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == '__main__':
    main()
