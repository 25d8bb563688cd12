"""Time full training iterations of a family (SSA-GAN by default) on random data; print one JSON line.

    python benchmarks/train_step.py --nf 32 --batch 2 --size 256 --iters 3 --mode faithful
    python benchmarks/train_step.py --model dfgan --nf 32 --batch 2 --size 256 --iters 3
    python benchmarks/train_step.py --nf 32 --batch 2 --mode fast
    python benchmarks/train_step.py --nf 16 --batch 16 --size 32 --mode fast --phases --set TRAIN.LAMBDA_DA=0
    python benchmarks/train_step.py --nf 32 --batch 2 --mode official --official-repo ../text2image

Data: random images in [-1, 1], random captions over a 5,450-word vocabulary (CUB's) with
lengths 5..18 sorted longest first, random class ids. Models are randomly initialised
(the frozen Inception trunk too), which costs the same time as trained weights.

``--mode official`` times the official implementation (model.py, DAMSM.py, miscc/losses.py of
a local clone of the official repository, given by --official-repo) with the official update
order, on the same inputs, for a side-by-side comparison. ``--check`` runs ``--iters``
iterations of ``faithful`` and ``official`` one after the other from identical weights and inputs
and reports the loss differences of each.

``--allocator`` sets the CPU memory policy (``CPU_ALLOCATOR``): our training applies 'keep',
the official code leaves the system's; give the same to both for a like-for-like comparison.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import resource
import sys
import time
import types

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from datasets import Batch  # noqa: E402
from miscc.core.config import load_config  # noqa: E402
from miscc.core.runtime import configure_cpu_allocator  # noqa: E402
from miscc.families import family_of, ssagan  # noqa: E402
from miscc.training.gan import apply_fast_model_options  # noqa: E402
from models import CNN_ENCODER, RNN_ENCODER  # noqa: E402

VOCAB = 5450


def random_batch(batch: int, size: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, size, size, generator=gen) * 2 - 1
    lengths = torch.randint(5, 19, (batch,), generator=gen).sort(descending=True).values
    captions = torch.randint(1, VOCAB, (batch, 18), generator=gen)
    captions[torch.arange(18)[None, :] >= lengths[:, None]] = 0
    class_ids = torch.randint(0, 200, (batch,), generator=gen)
    return images, captions, lengths, class_ids


def build_ours(args, device, overrides=()):
    """Our update at the benchmark's settings: a callable (images, captions, lengths, class ids)
    -> losses like the official one, and the bare (netG, netD, text encoder, image encoder)."""
    model = getattr(args, 'model', 'ssagan')
    # DF-GAN's G loss has no DAMSM term (its configs set TRAIN.LAMBDA_DA: 0)
    family_keys = [f'MODEL.NAME={model}'] + (['TRAIN.LAMBDA_DA=0'] if model.startswith('dfgan') else [])
    cfg = load_config(None, [f'TRAIN.NF={args.nf}', f'TREE.BASE_SIZE={args.size}',
                             f'TRAIN.FAST={args.mode == "fast"}', *family_keys, *overrides])
    family = family_of(cfg)
    torch.manual_seed(0)
    nets = {k: net.to(device) for k, net in family.build_networks(cfg).items()}
    text_encoder = RNN_ENCODER(VOCAB).to(device).eval().requires_grad_(False)
    image_encoder = CNN_ENCODER(256, input_size=cfg.TEXT.IMAGE_ENCODER_INPUT).to(device).eval().requires_grad_(False)
    optimizers = family.make_optimizers(cfg, nets)
    encoders = {'text_encoder': text_encoder, 'image_encoder': image_encoder}
    modules = dict(nets, netG=apply_fast_model_options(cfg, family, nets), **encoders)
    update = family.make_update(cfg, nets, modules, encoders, optimizers)

    def step(images, captions, lengths, class_ids):
        return update(Batch(images, captions, lengths, class_ids, [''] * len(images)))
    step.update = update
    return step, (nets['netG'], nets['netD'], text_encoder, image_encoder)


class PhaseTimes:
    """Seconds spent in the parts of SSA-GAN's iteration (``--phases``): the generator's forward,
    the D step, the G step and, inside it, the forward of the DAMSM loss. Wraps the update's
    callables; the totals are per iteration after ``per_iter``."""

    def __init__(self, update, device):
        self.device, self.totals = device, {'g_forward': 0.0, 'd_step': 0.0, 'g_step': 0.0, 'damsm_forward': 0.0}
        update.wrapped_G = self._timed('g_forward', update.wrapped_G)
        update.d_step = self._timed('d_step', update.d_step)
        update.g_step = self._timed('g_step', update.g_step)
        self._restore = [(ssagan, 'damsm_loss', ssagan.damsm_loss)]
        ssagan.damsm_loss = self._timed('damsm_forward', ssagan.damsm_loss)

    def _timed(self, name, fn):
        def run(*args, **kwargs):
            sync(self.device)
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            sync(self.device)
            self.totals[name] += time.perf_counter() - start
            return out
        return run

    def reset(self):
        self.totals = dict.fromkeys(self.totals, 0.0)

    def per_iter(self, iters: int) -> dict:
        for module, name, fn in self._restore:
            setattr(module, name, fn)
        return {k: round(v / iters * 1000, 1) for k, v in self.totals.items()}


def load_official(repo: str):
    """Import the official model.py, DAMSM.py and miscc/losses.py from a local clone."""
    if not os.path.isfile(os.path.join(repo, 'model.py')):
        sys.exit(f"--official-repo '{repo}' has no model.py: give the path of a clone of the "
                 f"official SSA-GAN repository")
    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if k == 'miscc' or k.startswith('miscc.')}
    sys.path.insert(0, repo)
    try:
        pkg = types.ModuleType('miscc')
        pkg.__path__ = [os.path.join(repo, 'miscc')]
        sys.modules['miscc'] = pkg
        spec = importlib.util.spec_from_file_location('miscc.config', os.path.join(repo, 'miscc', 'config.py'))
        config = importlib.util.module_from_spec(spec)
        sys.modules['miscc.config'] = config
        spec.loader.exec_module(config)
        config.cfg.CUDA = torch.cuda.is_available()
        modules = {}
        for name, rel in (('model', 'model.py'), ('DAMSM', 'DAMSM.py'), ('miscc.losses', 'miscc/losses.py')):
            spec = importlib.util.spec_from_file_location(name, os.path.join(repo, rel))
            mod = importlib.util.module_from_spec(spec)
            sys.modules[name] = mod
            spec.loader.exec_module(mod)
            modules[name] = mod
        return modules, config.cfg
    finally:
        sys.path.remove(repo)
        for k in [k for k in sys.modules if k == 'miscc' or k.startswith('miscc.')]:
            sys.modules.pop(k)
        sys.modules.update(saved)


@contextlib.contextmanager
def offline_inception():
    """The official image encoder downloads ImageNet weights; build it with random ones."""
    import torchvision.models as tvm
    real = tvm.inception_v3
    tvm.inception_v3 = lambda pretrained=True, transform_input=False: real(
        weights=None, aux_logits=True, init_weights=False, transform_input=False)
    try:
        yield
    finally:
        tvm.inception_v3 = real


class OfficialUpdate:
    """The official main.py iteration (D hinge step, MA-GP step, G step) with the official
    modules and loss functions, for timing and for checking our update against it."""

    def __init__(self, args, device, modules, cfg):
        self.device, self.modules, self.cfg = device, modules, cfg
        torch.manual_seed(0)
        model, damsm = modules['model'], modules['DAMSM']
        self.netG = model.NetG(args.nf, 100).to(device)
        self.netD = model.NetD(args.nf).to(device)
        self.text_encoder = damsm.RNN_ENCODER(VOCAB, nhidden=256).to(device).eval()
        with offline_inception():
            self.image_encoder = damsm.CNN_ENCODER(256).to(device).eval()
        for p in list(self.text_encoder.parameters()) + list(self.image_encoder.parameters()):
            p.requires_grad = False
        self.optG = torch.optim.Adam(self.netG.parameters(), lr=0.0001, betas=(0.0, 0.9))
        self.optD = torch.optim.Adam(self.netD.parameters(), lr=0.0004, betas=(0.0, 0.9))

    def __call__(self, images, captions, cap_lens, class_ids):
        dev, netG, netD = self.device, self.netG, self.netD
        bsz = images.size(0)
        imgs, captions, cap_lens = images.to(dev), captions.to(dev), cap_lens.to(dev)
        hidden = self.text_encoder.init_hidden(bsz)
        words_embs, sent_emb = self.text_encoder(captions, cap_lens, hidden)
        words_embs, sent_emb = words_embs.detach(), sent_emb.detach()
        real_features = netD(imgs)
        err_real = torch.relu(1.0 - netD.COND_DNET(real_features, sent_emb)).mean()
        err_mis = torch.relu(1.0 + netD.COND_DNET(real_features[:bsz - 1], sent_emb[1:bsz])).mean()
        noise = torch.randn(bsz, 100, device=dev)
        fake, _ = netG(noise, sent_emb)
        err_fake = torch.relu(1.0 + netD.COND_DNET(netD(fake.detach()), sent_emb)).mean()
        err_d = err_real + (err_fake + err_mis) / 2.0
        self.optD.zero_grad()
        err_d.backward()
        self.optD.step()
        interpolated = imgs.data.requires_grad_()
        sent_inter = sent_emb.data.requires_grad_()
        out = netD.COND_DNET(netD(interpolated), sent_inter)
        grads = torch.autograd.grad(outputs=out, inputs=(interpolated, sent_inter),
                                    grad_outputs=torch.ones(out.size(), device=dev),
                                    retain_graph=True, create_graph=True, only_inputs=True)
        grad = torch.cat((grads[0].view(bsz, -1), grads[1].view(bsz, -1)), dim=1)
        d_loss = 2.0 * torch.mean(torch.sqrt(torch.sum(grad ** 2, dim=1)) ** 6)
        self.optD.zero_grad()
        d_loss.backward()
        self.optD.step()
        err_g = -netD.COND_DNET(netD(fake), sent_emb).mean()
        real_labels = torch.ones(bsz, device=dev)
        match_labels = torch.arange(bsz, device=dev)
        damsm = 0.05 * self.modules['miscc.losses'].DAMSM_loss(
            self.image_encoder, fake, real_labels, words_embs, sent_emb, match_labels, cap_lens,
            class_ids.numpy())
        self.optG.zero_grad()
        (err_g + damsm).backward()
        self.optG.step()
        return {'errD': err_d.item(), 'MAGP': d_loss.item(), 'errG': err_g.item(), 'DAMSM': damsm.item()}


def peak_memory_mb(device) -> float:
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def count_flops(update, batch, device) -> int:
    """Floating-point operations of one iteration, from the operator-level formulas of
    torch.utils.flop_counter (convolutions, matrix products, attention; forward, backward and the
    double backward of MA-GP). A dispatch mode is used rather than FlopCounterMode, whose module
    hooks do not allow autograd.grad on leaf inputs."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class Counter(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            formula = flop_registry.get(func._overloadpacket)
            if formula is not None:
                Counter.total += formula(*args, **kwargs, out_val=out)
            return out

    with Counter():
        update(*batch)
    sync(device)
    return Counter.total


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--nf', type=int, default=32)
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--size', type=int, default=256)
    parser.add_argument('--iters', type=int, default=3)
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--mode', choices=['faithful', 'fast', 'official'], default='faithful')
    parser.add_argument('--model', default='ssagan',
                        help="MODEL.NAME of the family to time (ssagan, dfgan, dfgan_v1); 'official' and "
                             "--check are SSA-GAN's")
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--official-repo', default='', help='local clone of the official repository')
    parser.add_argument('--check', action='store_true',
                        help='compare --iters faithful iterations with official ones (needs --official-repo)')
    parser.add_argument('--set', nargs='*', default=[], metavar='KEY=VALUE', help='config overrides')
    parser.add_argument('--allocator', choices=['keep', 'system'], default=None,
                        help="CPU memory policy (the CPU_ALLOCATOR key, miscc.core.runtime.configure_cpu_allocator); "
                             "default: the config's ('keep') for our modes, 'system' for the official code, "
                             "which sets none")
    parser.add_argument('--profile', type=int, default=0, metavar='N',
                        help='also profile one iteration and print its N most expensive operators to stderr')
    parser.add_argument('--profile-shapes', action='store_true',
                        help='with --profile: one row per operator and input shapes')
    parser.add_argument('--flops', action='store_true',
                        help='also count the floating-point operations of one iteration (torch.utils.flop_counter: '
                             'convolutions and matrix products, forward and backward) and report TFLOP per image')
    parser.add_argument('--phases', action='store_true',
                        help="also report the ms per iteration of G's forward, the D step, the G step and the "
                             "DAMSM loss's forward inside it (SSA-GAN, our modes)")
    parser.add_argument('--peak-tflops', type=float, default=0.0, metavar='T',
                        help='with --flops: the device peak in TFLOP/s, to report model FLOP utilisation')
    args = parser.parse_args(argv)
    if args.model != 'ssagan' and (args.mode == 'official' or args.check):
        parser.error('--mode official and --check compare with the official SSA-GAN code: use --model ssagan')
    if args.phases and (args.model != 'ssagan' or args.mode == 'official' or args.check):
        parser.error("--phases times the parts of our SSA-GAN update: use --model ssagan and --mode faithful or fast")
    device = torch.device(args.device)
    if args.allocator is None:
        args.allocator = 'system' if args.mode == 'official' else load_config(None, args.set).CPU_ALLOCATOR
    configure_cpu_allocator(args.allocator)
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
    batches = [random_batch(args.batch, args.size, seed) for seed in range(args.warmup + args.iters)]

    if args.check:
        modules, cfg = load_official(args.official_repo)
        official = OfficialUpdate(args, device, modules, cfg)
        ours, nets = build_ours(args, device, args.set)
        for mine, theirs in zip(nets, (official.netG, official.netD, official.text_encoder, official.image_encoder)):
            mine.load_state_dict(theirs.state_dict())
        # --iters consecutive iterations, so that the optimiser states are compared too
        for step, batch in enumerate(batches[:args.iters]):
            torch.manual_seed(1 + step)
            a = official(*batch)
            torch.manual_seed(1 + step)
            b = ours(*batch)
            print(json.dumps({'iteration': step + 1, 'official': a, 'ours': {k: b[k] for k in a},
                              'max_abs_diff': max(abs(a[k] - b[k]) for k in a)}))
        return

    if args.mode == 'official':
        modules, cfg = load_official(args.official_repo)
        update = OfficialUpdate(args, device, modules, cfg)
    else:
        update, _ = build_ours(args, device, args.set)
    phases = PhaseTimes(update.update, device) if args.phases else None
    for images, captions, lens, class_ids in batches[:args.warmup]:
        update(images, captions, lens, class_ids)
    sync(device)
    if phases:
        phases.reset()
    usage_before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    for images, captions, lens, class_ids in batches[args.warmup:]:
        update(images, captions, lens, class_ids)
    sync(device)
    ms = (time.perf_counter() - start) / args.iters * 1000
    usage = resource.getrusage(resource.RUSAGE_SELF)
    # page faults and kernel CPU time per iteration: what the CPU_ALLOCATOR setting is about
    memory = {'page_faults_per_iter': round((usage.ru_minflt - usage_before.ru_minflt) / args.iters),
              'system_cpu_s_per_iter': round((usage.ru_stime - usage_before.ru_stime) / args.iters, 3)}
    # the process's own CPU time: on a shared machine less inflated by other jobs than the wall clock
    cpu_ms = (usage.ru_utime + usage.ru_stime - usage_before.ru_utime - usage_before.ru_stime) / args.iters * 1000
    extra = {'cpu_ms_per_iter': round(cpu_ms, 1)}
    if phases:
        extra['phase_ms_per_iter'] = phases.per_iter(args.iters)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda' else [])
        with profile(activities=activities, record_shapes=args.profile_shapes) as prof:
            update(*batches[-1])
            sync(device)
        key = 'self_cuda_time_total' if device.type == 'cuda' else 'self_cpu_time_total'
        table = prof.key_averages(group_by_input_shape=args.profile_shapes)
        print(table.table(sort_by=key, row_limit=args.profile, max_name_column_width=60,
                          max_shapes_column_width=120), file=sys.stderr)
    if args.flops:
        flops = count_flops(update, batches[-1], device)
        extra['tflop_per_image'] = round(flops / args.batch / 1e12, 4)
        extra['achieved_tflops'] = round(flops / (ms / 1000) / 1e12, 2)
        if args.peak_tflops:
            extra['mfu'] = round(flops / (ms / 1000) / 1e12 / args.peak_tflops, 4)
    print(json.dumps({'ms_per_iter': round(ms, 1), 'model': args.model, 'mode': args.mode, 'nf': args.nf, 'batch': args.batch,
                      'size': args.size, 'allocator': args.allocator,
                      'peak_rss_mb': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                      **({'peak_gpu_mb': round(peak_memory_mb(device), 1)} if device.type == 'cuda' else {}),
                      'device': str(device),
                      **({'gpu': torch.cuda.get_device_name(device)} if device.type == 'cuda' else {}),
                      'torch': torch.__version__, 'threads': torch.get_num_threads(), 'images_per_s': round(args.batch * 1000 / ms, 2),
                      **memory,
                      'iters': args.iters, **extra}))


if __name__ == '__main__':
    with contextlib.suppress(BrokenPipeError):
        main()
