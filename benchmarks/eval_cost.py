"""Cost of one in-training evaluation (EVAL.INTERVAL) on this machine; print one JSON line.

    python benchmarks/eval_cost.py                          # NF 64, 256 px, 3,000 images, CPU
    python benchmarks/eval_cost.py --measure 32 --device cuda

The evaluation is: generate ``--images`` images from the test captions (text encoder + NetG),
embed each with the FID Inception (torch-fidelity's TF-Inception port, pool3 2048 features),
embed each with the DAMSM image encoder for R-precision, then FID + KID against 2,933
reference features and R-precision ('pairs'). The per-image parts are timed on ``--measure``
images (batches of ``--batch``) and scaled linearly to ``--images``; FID, KID and R-precision
are computed at the full size on random features of the same shapes.

Weights: all networks are randomly initialised (the FID Inception of the same architecture
through EVAL.RANDOM_WEIGHTS; the real TF weights are not needed), which costs the same time
as trained weights. Times: wall seconds and process CPU seconds (all threads); on a shared
machine the wall time is inflated by the other processes, see ``load_average``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from miscc.core.config import load_config  # noqa: E402
from miscc.evaluation.metrics import r_precision  # noqa: E402
from miscc.evaluation.scores import damsm_codes, fid_and_kid, inception_extractor  # noqa: E402
from miscc.families import family_of  # noqa: E402
from models import CNN_ENCODER, RNN_ENCODER  # noqa: E402

CUB_WORDS, CUB_TEST_IMAGES = 5450, 2933


class Timer:
    """Wall and process-CPU seconds of the blocks it times, by name."""

    def __init__(self):
        self.wall, self.cpu = {}, {}

    def __call__(self, name):
        timer = self

        class Block:
            def __enter__(self):
                self.w, self.c = time.perf_counter(), time.process_time()

            def __exit__(self, *exc):
                timer.wall[name] = timer.wall.get(name, 0.0) + time.perf_counter() - self.w
                timer.cpu[name] = timer.cpu.get(name, 0.0) + time.process_time() - self.c
        return Block()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--nf', type=int, default=64)
    parser.add_argument('--size', type=int, default=256, help='generated image size (TREE.BASE_SIZE)')
    parser.add_argument('--images', type=int, default=3000, help='EVAL.NUM_FID')
    parser.add_argument('--measure', type=int, default=32, help='images actually generated and embedded')
    parser.add_argument('--batch', type=int, default=16)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--threads', type=int, default=0, help='torch threads (0: torch default)')
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = load_config(os.path.join(ROOT, 'cfg', 'bird.yml'),
                      [f'TRAIN.NF={args.nf}', f'TREE.BASE_SIZE={args.size}', 'EVAL.RANDOM_WEIGHTS=True',
                       'EVAL.FID_DIMS=2048']).freeze()
    torch.manual_seed(0)
    family = family_of(cfg)
    netG = family.build_generator(cfg).to(device).eval()
    text_encoder = RNN_ENCODER(CUB_WORDS, nhidden=256).to(device).eval()
    image_encoder = CNN_ENCODER(256).to(device).eval()
    extractor, tag = inception_extractor(cfg, ['2048'], device)
    timer = Timer()
    sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)

    def per_image_pass():
        feats = []
        for start in range(0, args.measure, args.batch):
            n = min(args.batch, args.measure - start)
            caps = torch.randint(1, CUB_WORDS, (n, 18))
            lens = torch.full((n,), 18)
            with torch.no_grad():
                with timer('generate'):
                    _, sent = text_encoder(caps.to(device), lens, text_encoder.init_hidden(n))
                    fake, _ = family.generate(netG, family.noise(cfg, range(start, start + n), 0).to(device), sent)
                    images = ((fake.float() + 1) * 127.5).clamp(0, 255).to(torch.uint8)
                    sync()
                with timer('fid_inception'):
                    feats.append(extractor(images)[0].double().cpu())
                    sync()
                with timer('damsm_codes'):
                    damsm_codes(image_encoder, text_encoder, images, caps, lens, batch=n, device=device)
                    sync()
        return feats

    per_image_pass()                       # warm-up (allocator, kernels), not counted
    timer.wall.clear()
    timer.cpu.clear()
    per_image_pass()
    scale = args.images / args.measure
    gen = torch.Generator().manual_seed(1)
    feats = torch.randn(args.images, 2048, generator=gen, dtype=torch.float64)
    ref = torch.randn(CUB_TEST_IMAGES, 2048, generator=gen, dtype=torch.float64)
    ref_stats = {'mu': ref.mean(0).numpy(), 'sigma': torch.cov(ref.T).numpy(), 'features': ref}
    with timer('fid_kid'):
        fid_and_kid(cfg, feats, ref_stats)
    codes = torch.randn(args.images, 256, generator=gen)
    with timer('r_precision'):
        r_precision(codes, codes + torch.randn(args.images, 256, generator=gen), seed=0)
    parts = {}
    for name in timer.wall:
        factor = scale if name in ('generate', 'fid_inception', 'damsm_codes') else 1.0
        parts[name] = {'wall_s': round(timer.wall[name] * factor, 2), 'cpu_s': round(timer.cpu[name] * factor, 2)}
    result = {
        'benchmark': 'in-training evaluation (FID + KID + R-precision)',
        'device': str(device), 'threads': torch.get_num_threads(), 'nf': args.nf, 'image_size': args.size,
        'images': args.images, 'measured_images': args.measure, 'batch': args.batch,
        'extrapolated': args.measure != args.images,
        'weights': 'random initialisation (FID Inception of the same architecture, ' + tag['weights'] + ')',
        'seconds_per_evaluation': round(sum(p['wall_s'] for p in parts.values()), 1),
        'cpu_seconds_per_evaluation': round(sum(p['cpu_s'] for p in parts.values()), 1),
        'parts': parts,
        'load_average': [round(x, 2) for x in os.getloadavg()],
        'torch': torch.__version__,
    }
    print(json.dumps(result))
    return result


if __name__ == '__main__':
    main()
