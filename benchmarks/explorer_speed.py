"""Seconds from a typed caption to the explorer's images (miscc/explorer.py ``Explorer.generate``:
encoding, generation, the grids), with the generator and text encoder loaded once, on the CPU.

    python benchmarks/explorer_speed.py [--repeats 20] [--count 8] [--threads 0]

Two rows, random-initialised networks (speed does not depend on the weights): the demo's
generator (cfg/demo.yml: SSA-GAN at 32 px, NF 8) and the official one (cfg/bird.yml: 256 px,
NF 64). The vocabulary and captions are those of a small synthetic-birds set written to a
temporary folder. For the demo's generator also the page's round trip: the page served on
127.0.0.1 and its generate action called over HTTP (gradio_client, which Gradio installs),
PNG files included. Prints one JSON object: per row the median and the spread of the seconds.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time

import torch
from gradio_client import Client

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets import TextDataset  # noqa: E402
from miscc.core.config import load_config  # noqa: E402
from miscc.data.synthetic import make_synthetic_birds  # noqa: E402
from miscc.evaluation.generation import GenerationStack  # noqa: E402
from miscc.explorer import Explorer, LoadedModel, build_page, launch  # noqa: E402
from miscc.families import family_of  # noqa: E402
from models import RNN_ENCODER  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROWS = {'demo (cfg/demo.yml)': 'cfg/demo.yml', 'official 256 px, NF 64 (cfg/bird.yml)': 'cfg/bird.yml'}
CAPTION = 'this small bird has a red belly, blue wings and a yellow crown'


def cpu_flags() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            flags = next(line for line in f if line.startswith('flags')).split()
    except (OSError, StopIteration):
        return platform.processor()
    return ' '.join(sorted({f for f in flags if re.match(r'avx|amx', f)}))


def stack_for(cfg_file: str, data_dir: str) -> GenerationStack:
    cfg = load_config(os.path.join(ROOT, cfg_file), [f'DATA_DIR={data_dir}', 'DATASET_NAME=synthetic_birds',
                                                     'DEVICE=cpu', 'B_VALIDATION=True', 'DEMO.RUN=False']).freeze()
    dataset = TextDataset(data_dir, 'test', image_size=cfg.TREE.BASE_SIZE, dataset_name='synthetic_birds',
                          captions_per_image=cfg.TEXT.CAPTIONS_PER_IMAGE, words_num=cfg.TEXT.WORDS_NUM, augment=False)
    family = family_of(cfg)
    torch.manual_seed(0)
    netg = family.build_generator(cfg).eval()
    encoder = RNN_ENCODER(dataset.n_words, nhidden=cfg.TEXT.EMBEDDING_DIM).eval()
    return GenerationStack(cfg, family, netg, '(random)', encoder, '(random)', dataset, torch.device('cpu'))


def summary(seconds: list) -> dict:
    return {'median_s': round(statistics.median(seconds), 4), 'min_s': round(min(seconds), 4),
            'max_s': round(max(seconds), 4)}


def timed(call, repeats: int) -> list:
    call(0)                                                            # warm-up
    seconds = []
    for seed in range(1, repeats + 1):
        start = time.perf_counter()
        call(seed)
        seconds.append(time.perf_counter() - start)
    return seconds


def page_round_trip(explorer: Explorer, count: int, repeats: int, port: int) -> list:
    """Seconds of the page's generate action over HTTP (the server in this process)."""
    page = build_page(explorer)
    launch(page, '127.0.0.1', port, block=False)
    try:
        client = Client(f'http://127.0.0.1:{port}/', verbose=False)
        return timed(lambda seed: client.predict(CAPTION, count, seed, api_name='/generate'), repeats)
    finally:
        with contextlib.redirect_stdout(sys.stderr):                  # Gradio says it closed; stdout is the JSON
            page.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--repeats', type=int, default=20)
    parser.add_argument('--count', type=int, default=8, help='images per caption')
    parser.add_argument('--threads', type=int, default=0, help='torch threads (0: as set)')
    parser.add_argument('--port', type=int, default=7899, help='port of the page for the round trip')
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = {'command': ' '.join(['python', 'benchmarks/explorer_speed.py'] + (argv or sys.argv[1:])),
           'cpu_flags': cpu_flags(), 'torch_threads': torch.get_num_threads(), 'images': args.count, 'rows': {}}
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, 'birds')
        make_synthetic_birds(data, num_train=20, num_test=10, image_size=128, seed=0, workers=1)
        for name, cfg_file in ROWS.items():
            stack = stack_for(cfg_file, data)
            explorer = Explorer([LoadedModel(name, stack)])
            seconds = timed(lambda seed: explorer.generate(CAPTION, args.count, seed), args.repeats)
            out['rows'][name] = {'image_size': stack.cfg.TREE.BASE_SIZE, 'nf': stack.cfg.TRAIN.NF, **summary(seconds)}
            if stack.cfg.TREE.BASE_SIZE == 32:
                out['rows'][name]['page_round_trip'] = summary(page_round_trip(explorer, args.count, args.repeats,
                                                                               args.port))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
