"""Data-loader throughput on the synthetic birds: prints one JSON line.

    python benchmarks/dataloader.py [--data-dir data/synthetic_birds] [--size 256]
                                    [--workers 1] [--batch-size 24] [--batches 40]

Measures training batches (crop, resize, random crop, flip, [-1, 1], sorted collate)
through a DataLoader with ``--workers`` worker processes, once decoding each JPEG and
once from the preprocessed view cache (built in a temporary folder, build time
reported separately), and reports images/s per worker for both. The synthetic set is
created with its defaults if the folder is missing.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from datasets import TextDataset, collate_sorted  # noqa: E402
from miscc.data.synthetic import ensure_synthetic_birds  # noqa: E402


def _throughput(dataset, workers: int, batch_size: int, batches: int) -> float:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True,
                        num_workers=workers, collate_fn=collate_sorted,
                        persistent_workers=False)
    it = iter(loader)
    next(it)  # worker start-up is not throughput
    start = time.perf_counter()
    n = 0
    for _ in range(batches):
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        n += batch.images.shape[0]
    return n / (time.perf_counter() - start)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--data-dir', default='data/synthetic_birds')
    p.add_argument('--size', type=int, default=256)
    p.add_argument('--workers', type=int, default=1)
    p.add_argument('--batch-size', type=int, default=24)
    p.add_argument('--batches', type=int, default=40)
    p.add_argument('--no-cache', action='store_true', help='skip the cached measurement')
    args = p.parse_args(argv)
    torch.manual_seed(0)
    ensure_synthetic_birds(args.data_dir)
    common = dict(split='train', image_size=args.size, dataset_name='synthetic_birds', augment=True)
    plain = TextDataset(args.data_dir, **common)
    per_worker = max(args.workers, 1)
    result = {'dataset': 'synthetic_birds', 'image_size': args.size, 'workers': args.workers,
              'batch_size': args.batch_size, 'images': args.batches * args.batch_size,
              'torch_threads': torch.get_num_threads(),
              'images_per_s': None, 'images_per_s_per_worker': None}
    ips = _throughput(plain, args.workers, args.batch_size, args.batches)
    result['images_per_s'] = round(ips, 1)
    result['images_per_s_per_worker'] = round(ips / per_worker, 1)
    if not args.no_cache:
        cache_dir = tempfile.mkdtemp(prefix='ssagan-cache-')
        try:
            start = time.perf_counter()
            cached = TextDataset(args.data_dir, cache_dir=cache_dir, **common)
            result['cache_build_s'] = round(time.perf_counter() - start, 1)
            cips = _throughput(cached, args.workers, args.batch_size, args.batches)
        finally:
            shutil.rmtree(cache_dir, ignore_errors=True)
        result['cached_images_per_s'] = round(cips, 1)
        result['cached_images_per_s_per_worker'] = round(cips / per_worker, 1)
        result['cache_speedup'] = round(cips / ips, 2)
    print(json.dumps(result))
    return 0


if __name__ == '__main__':
    sys.exit(main())
