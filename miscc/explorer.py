"""The explorer: a local web page (Gradio) to type a caption and see what trained generators
draw from it, their masks at every stage, two captions interpolated, and several generators
side by side on the same caption and noise.

    python explore.py                                   # the demo's generator (output/demo)
    python explore.py output/<run> other/models/netG_040.pth --cfg cfg/bird.yml --port 7860

``Explorer`` holds the page's logic as plain Python (loaded generators, generation, grids,
messages); ``build_page`` lays it out with Gradio; ``main`` is the command line. Everything is
served from this machine: Gradio's analytics are off and the theme uses the system's fonts.
"""
from __future__ import annotations

import argparse
import glob
import itertools
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import yaml
from PIL import Image, ImageDraw

from datasets import TextDataset, build_dataset

from .cli import USER_ERRORS
from .core.checkpoint import BEST_NAME, EMA_NAME, load_file
from .core.config import check_values, default_config, load_config, parse_overrides
from .core.runtime import device_from_config
from .data.synthetic import caption_attributes, read_attributes
from .evaluation.generation import CaptionError, GenerationStack, load_generation_stack, to_uint8_image
from .evaluation.upscale import Upscaler, build_upscaler
from .training.state import STATE_NAME

os.environ.setdefault('GRADIO_ANALYTICS_ENABLED', 'False')   # before gradio is imported: no calls home
import gradio as gr  # noqa: E402

__all__ = ['ExplorerError', 'LoadedModel', 'Explorer', 'load_model', 'run_config', 'newest_generator',
           'heat_map', 'build_page', 'main', 'DEFAULT_SOURCE', 'MAX_IMAGES']

DEFAULT_SOURCE = 'output/demo'
MAX_IMAGES = 16          # images per caption the page offers
TILE = 96                # displayed side of each image and mask tile, px (nearest-neighbour enlarged)
LABEL_HEIGHT = 18        # the model's name above its column


class ExplorerError(ValueError):
    """A caption, source or generator the explorer cannot use (shown in the page, or one line)."""


# ----------------------------------------------------------------------------- sources
def run_config(run: str):
    """The config a run folder was trained with (kept in its ``models/state_last.pth``)."""
    state = load_file(os.path.join(run, 'models', STATE_NAME))
    if not isinstance(state, dict) or not isinstance(state.get('config'), str):
        raise ExplorerError(f"'{run}/models/{STATE_NAME}' holds no config; pass the generator file with --cfg")
    cfg = default_config()
    cfg.merge(yaml.safe_load(state['config']), source=f'{run}/models/{STATE_NAME}')
    return check_values(cfg)


def newest_generator(models_dir: str) -> str:
    """The newest ``netG_*.pth`` of a run's ``models/`` (not the average or the best, which
    ``TRAIN.G_EMA`` / an explicit path select)."""
    found = [p for p in glob.glob(os.path.join(models_dir, 'netG_*.pth'))
             if not os.path.basename(p).startswith((EMA_NAME + '_', BEST_NAME))]
    if not found:
        raise ExplorerError(f"'{models_dir}' holds no generator (netG_*.pth): train the run further")
    return max(found, key=os.path.getmtime)


def _resolve(source: str, cfg_file: str, overrides) -> tuple:
    """(config, generator file) of a source: a demo output folder (its GAN run), a run folder,
    or a generator file (with ``cfg_file``, or the config of the run it belongs to)."""
    if os.path.isdir(os.path.join(source, 'gan')):                # the demo's OUTPUT_DIR
        runs = glob.glob(os.path.join(source, 'gan', '*', 'models', STATE_NAME))
        if not runs:
            raise ExplorerError(f"'{source}' has no trained GAN run: run the demo first "
                                f"(python main.py --cfg cfg/demo.yml)")
        source = os.path.dirname(os.path.dirname(max(runs, key=os.path.getmtime)))
    if os.path.isdir(source):
        if not os.path.isfile(os.path.join(source, 'models', STATE_NAME)):
            raise ExplorerError(f"'{source}' is not a run folder (no models/{STATE_NAME}) nor the demo's output folder")
        cfg = load_config(cfg_file, []) if cfg_file else run_config(source)
        netg = newest_generator(os.path.join(source, 'models'))
    elif os.path.isfile(source):
        netg = source
        run = os.path.dirname(os.path.dirname(os.path.abspath(source)))
        if cfg_file:
            cfg = load_config(cfg_file, [])
        elif os.path.isfile(os.path.join(run, 'models', STATE_NAME)):
            cfg = run_config(run)
        else:
            raise ExplorerError(f"'{source}' is not inside a run folder: give its config with --cfg "
                                f"(e.g. cfg/bird.yml for a released SSA-GAN generator)")
    elif source == DEFAULT_SOURCE:
        raise ExplorerError(f"no demo output in '{source}': run the demo first (python main.py --cfg cfg/demo.yml), "
                            f"or name a run folder or a generator file")
    else:
        raise ExplorerError(f"'{source}' not found: give a run folder, a generator file or the demo's output folder")
    parse_overrides(cfg, list(overrides) + ['B_VALIDATION=True'])
    return cfg.freeze(), netg


@dataclass
class LoadedModel:
    """A generator with its text encoder, vocabulary and test captions, loaded once."""
    name: str
    stack: GenerationStack
    upscaler: Upscaler | None = None


def load_model(source: str, cfg_file: str = '', overrides=(), device: str = '') -> LoadedModel:
    """``source`` (see ``_resolve``) loaded for sampling; ``overrides`` are KEY=VALUE strings
    (``SAMPLE.UPSCALE``, ``TRAIN.G_EMA``, ``DEVICE`` ...). Every problem is one line (ExplorerError
    or the scripts' user errors: a missing text encoder, a generator of another family or size)."""
    cfg, netg = _resolve(source, cfg_file, overrides)
    dev = device or device_from_config(cfg).device
    if cfg.DATA.HD5_FILE:
        raise ExplorerError(f"'{netg}' was trained on the precomputed embeddings of DATA.HD5_FILE, which typed "
                            f"captions do not have: the explorer needs a generator conditioned on a DAMSM text encoder")
    stack = load_generation_stack(cfg, netg, dev)
    name = f'{cfg.MODEL.NAME}: {os.path.basename(stack.netg_path)}'
    return LoadedModel(name, stack, build_upscaler(cfg, dev))


# ----------------------------------------------------------------------------- pictures
def heat_map(mask: np.ndarray) -> np.ndarray:
    """H x W in [0, 1] -> H x W x 3 uint8: dark blue (0) through red to yellow (1)."""
    m = np.clip(mask, 0.0, 1.0)
    rgb = np.stack([np.clip(2 * m, 0, 1), np.clip(2 * m - 1, 0, 1), 0.45 * (1 - m)], -1)
    return (rgb * 255).round().astype(np.uint8)


def _tile(array: np.ndarray, side: int = TILE) -> np.ndarray:
    """H x W x 3 uint8 enlarged (nearest) or kept to ``side`` x ``side``."""
    return np.asarray(Image.fromarray(array).resize((side, side), Image.NEAREST))


def _labelled_columns(columns: list, names: list, gap: int = 6) -> np.ndarray:
    """Columns (H_i x W_i x 3) side by side on white, each under its name (a column is widened
    to its name)."""
    draw = ImageDraw.Draw(Image.new('RGB', (1, 1)))
    widths = [max(c.shape[1], int(draw.textlength(n)) + 4) for c, n in zip(columns, names)]
    height = max(c.shape[0] for c in columns) + LABEL_HEIGHT
    canvas = Image.new('RGB', (sum(widths) + gap * (len(columns) - 1), height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    x = 0
    for column, name, width in zip(columns, names, widths):
        canvas.paste(Image.fromarray(column), (x, LABEL_HEIGHT))
        draw.text((x + 2, 3), name, fill=(0, 0, 0))
        x += width + gap
    return np.asarray(canvas)


def _grid(rows: list) -> np.ndarray:
    """Rows of equal square tiles (each a list of side x side x 3) stacked, rows left-aligned on white."""
    side = rows[0][0].shape[0]
    out = np.full((len(rows) * side, max(len(r) for r in rows) * side, 3), 255, dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            out[i * side:(i + 1) * side, j * side:(j + 1) * side] = tile
    return out


def _image_column(drawn: 'Drawn') -> np.ndarray:
    """A model's images one above the other, each at least ``TILE`` px (an enlarged image keeps its size)."""
    side = max(TILE, drawn.images.shape[1])
    return _grid([[_tile(im, side)] for im in drawn.images])


@dataclass
class Drawn:
    """What one model drew for one request."""
    images: np.ndarray                 # N x S x S x 3 uint8 (enlarged with SAMPLE.UPSCALE)
    masks: list = field(default_factory=list)   # per stage: N x s x s float in [0, 1], coarse to fine


# ----------------------------------------------------------------------------- the page's logic
class Explorer:
    """The loaded generators and what the page asks of them. Each method returns numpy images
    and message lines and raises ExplorerError for input that gives nothing to show."""

    def __init__(self, models: list, device: str = ''):
        self.models = list(models)
        self.device = device
        self.last_grid: np.ndarray | None = None
        self._train: dict = {}     # DATA_DIR -> the training birds (read on the first request)

    def add(self, source: str, cfg_file: str = '', overrides=()) -> str:
        """Load one more generator; returns the line to show."""
        model = load_model(source.strip(), cfg_file.strip(), overrides, self.device)
        self.models.append(model)
        return f'added {model.name} ({model.stack.netg_path})'

    # -- captions
    def sentences(self, model: LoadedModel, caption: str) -> tuple:
        """(sentence code 1 x E, message lines) of a caption for one model's vocabulary."""
        text = ' '.join(caption.split())
        if not text:
            raise ExplorerError('type a caption first')
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            try:
                caps, lens, _ = model.stack.encode([text])
            except CaptionError:
                raise ExplorerError(f'{model.name}: no word of "{text}" is in its vocabulary '
                                    f'({len(model.stack.dataset.wordtoix)} words); nothing to draw') from None
        notes = [f'{model.name}: {w.message}' for w in caught]
        return model.stack.sentences(caps, lens), notes

    @torch.no_grad()
    def _draw(self, model: LoadedModel, sent: torch.Tensor, count: int, seed: int) -> Drawn:
        noise = model.stack.noise(range(count), seed)
        images, masks = model.stack.generate(noise, sent.expand(count, -1))
        pixels = to_uint8_image(images).cpu()
        if model.upscaler is not None:
            pixels = model.upscaler(pixels)
        return Drawn(pixels.permute(0, 2, 3, 1).numpy(), [m[:, 0].float().cpu().numpy() for m in masks])

    def _check_count(self, count) -> int:
        count = int(count)
        if not 1 <= count <= MAX_IMAGES:
            raise ExplorerError(f'the number of images must be 1 to {MAX_IMAGES}, got {count}')
        return count

    def generate(self, caption: str, count: int, seed: int) -> tuple:
        """``(images grid, masks grid or None, message lines)``: each model's ``count`` images
        of the caption with the noise of ``seed`` (the same seed, the same images), side by side;
        for models with masks, each image's masks at every stage as a row of heat maps."""
        count = self._check_count(count)
        drawn, notes = [], []
        for model in self.models:
            sent, lines = self.sentences(model, caption)
            notes += lines
            drawn.append(self._draw(model, sent, count, int(seed)))
        names = [m.name for m in self.models]
        images = _labelled_columns([_image_column(d) for d in drawn], names)
        with_masks = [(n, d) for n, d in zip(names, drawn) if d.masks]
        masks = None
        if with_masks:
            columns = [_grid([[_tile(heat_map(stage[i])) for stage in d.masks] for i in range(count)])
                       for _, d in with_masks]
            masks = _labelled_columns(columns, [f'{n}: masks {d.masks[0].shape[-1]} to {d.masks[-1].shape[-1]} px'
                                                for n, d in with_masks])
        self.last_grid = images
        return images, masks, notes

    def interpolate(self, first: str, second: str, weight: float, count: int, seed: int) -> tuple:
        """``(grid, message lines)``: images of ``(1 - weight) * s(first) + weight * s(second)``
        (sentence codes, GAN-INT-CLS's interpolation) at the fixed noise of ``seed``."""
        count = self._check_count(count)
        if not 0.0 <= float(weight) <= 1.0:
            raise ExplorerError(f'the interpolation weight must be in [0, 1], got {weight}')
        columns, notes = [], []
        for model in self.models:
            a, lines_a = self.sentences(model, first)
            b, lines_b = self.sentences(model, second)
            notes += lines_a + lines_b
            columns.append(_image_column(self._draw(model, torch.lerp(a, b, float(weight)), count, int(seed))))
        return _labelled_columns(columns, [m.name for m in self.models]), notes

    def nearest_training_bird(self, caption: str) -> tuple | None:
        """For the synthetic birds: ``(image, line)`` of the first training bird with the most of the
        attributes the caption names (``caption_attributes``: body, wing, head, beak colour, size;
        on a tie, one with the caption's body colour), the line naming its attributes; None for
        other data sets or a caption naming none."""
        model = next((m for m in self.models if m.stack.cfg.DATASET_NAME == 'synthetic_birds'), None)
        named = caption_attributes(caption)
        if model is None or not named:
            return None
        train = self._training_birds(model.stack.cfg)
        # the most attributes right; among those, the right body colour first (the one every caption names)
        scores = [sum(a.get(k) == v for k, v in named.items()) for a in train.attributes]
        index = max(range(len(scores)), key=lambda i: (scores[i], train.attributes[i]['body'] == named.get('body')))
        bird = train.attributes[index]
        image = np.asarray(train.dataset.source_image(index).resize((TILE * 2, TILE * 2), Image.BICUBIC))
        shown = ', '.join(f'{k} {bird[k]}' for k in ('body', 'wing', 'head', 'beak', 'size'))
        asked = ', '.join(f'{k} {v}' for k, v in named.items())
        return image, f'{shown} ({scores[index]} of the {len(named)} attributes the caption names: {asked})'

    def save_grid(self, folder: str = '') -> str:
        """The last images grid as a PNG file (for the page's download button)."""
        if self.last_grid is None:
            raise ExplorerError('generate images first')
        fd, path = tempfile.mkstemp(prefix='explorer_', suffix='.png', dir=folder or None)
        os.close(fd)
        Image.fromarray(self.last_grid).save(path)
        return path

    def _training_birds(self, cfg) -> '_TrainBirds':
        """The synthetic training split and its birds' attributes (read once per data folder)."""
        key = os.path.abspath(cfg.DATA_DIR)
        if key not in self._train:
            dataset = build_dataset(cfg, 'train', augment=False)
            known = read_attributes(cfg.DATA_DIR)
            self._train[key] = _TrainBirds(dataset, [known[k] for k in dataset.filenames])
        return self._train[key]


@dataclass
class _TrainBirds:
    dataset: TextDataset
    attributes: list       # per training image: {'body': ..., 'wing': ..., 'head': ..., 'beak': ..., 'size': ...}


# ----------------------------------------------------------------------------- the page
def _shown(call):
    """Run a page action; an ExplorerError or a user error becomes a message in the page."""
    def run(*args):
        try:
            return call(*args)
        except (ExplorerError, *USER_ERRORS) as e:
            raise gr.Error(str(e), print_exception=False) from None
    return run


def build_page(explorer: Explorer) -> gr.Blocks:
    """The page: caption, number of images, seed (and new noise), images and masks of every
    model side by side, unknown words named, the nearest training bird, two captions
    interpolated, a PNG download of the grid, and adding a generator."""
    requests = itertools.count(1)

    def generate(caption, count, seed):
        start = time.perf_counter()
        images, masks, notes = explorer.generate(caption, count, seed)
        took = (time.perf_counter() - start) * 1000
        nearest = explorer.nearest_training_bird(caption)
        truth = nearest[0] if nearest else None
        label = f'nearest training bird: {nearest[1]}' if nearest else ''
        head = (f'request {next(requests)}: {int(count)} image(s) from {len(explorer.models)} generator(s) '
                f'in {took:.0f} ms, seed {int(seed)}')
        return images, masks, '\n'.join([head] + [f'- {n}' for n in notes or ['every word is known']]), truth, label

    def interpolate(first, second, weight, count, seed):
        grid, notes = explorer.interpolate(first, second, weight, count, seed)
        return grid, '\n'.join(f'- {n}' for n in notes)

    with gr.Blocks(title='SSA-GAN explorer', analytics_enabled=False) as page:
        gr.Markdown('## Text to image: type a caption, see what the generators draw')
        with gr.Row():
            caption = gr.Textbox(label='Caption', elem_id='caption', scale=4,
                                 placeholder='a small bird with a red belly and blue wings')
            count = gr.Slider(1, MAX_IMAGES, value=8, step=1, label='Images', elem_id='count')
            seed = gr.Number(value=0, precision=0, label='Noise seed', elem_id='seed')
        with gr.Row():
            go = gr.Button('Generate', variant='primary', elem_id='generate')
            new_noise = gr.Button('New noise', elem_id='new-noise')
            download = gr.DownloadButton('Save grid (PNG)', elem_id='save')
        notes = gr.Markdown(elem_id='notes')
        with gr.Row():
            with gr.Column():
                gr.Markdown('**Images**, one column per generator')
                images = gr.Image(show_label=False, elem_id='images', format='png', interactive=False)
            with gr.Column():
                gr.Markdown('**Masks** at every stage, coarse to fine (SSA-GAN)')
                masks = gr.Image(show_label=False, elem_id='masks', format='png', interactive=False)
            with gr.Column():
                gr.Markdown('**Ground truth**: the nearest training bird (synthetic birds)')
                truth = gr.Image(show_label=False, elem_id='truth', format='png', interactive=False)
                truth_caption = gr.Markdown(elem_id='truth-caption')
        with gr.Accordion('Interpolate two captions (fixed noise)', open=False):
            with gr.Row():
                first = gr.Textbox(label='First caption', elem_id='first')
                second = gr.Textbox(label='Second caption', elem_id='second')
                weight = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label='Towards the second', elem_id='weight')
            mix = gr.Button('Interpolate', elem_id='interpolate')
            mix_notes = gr.Markdown()
            mixed = gr.Image(show_label=False, elem_id='mixed', format='png', interactive=False)
        with gr.Accordion('Add a generator', open=False):
            with gr.Row():
                source = gr.Textbox(label='Run folder or generator file', elem_id='source')
                source_cfg = gr.Textbox(label='Its config (for a file outside a run folder)', elem_id='source-cfg')
            add_button = gr.Button('Add', elem_id='add')
            added = gr.Markdown(elem_id='added')

        outputs = [images, masks, notes, truth, truth_caption]
        go.click(_shown(generate), [caption, count, seed], outputs, api_name='generate')
        caption.submit(_shown(generate), [caption, count, seed], outputs, api_name=False)
        new_noise.click(lambda: int(np.random.default_rng().integers(0, 2 ** 31 - 1)), None, seed,
                        api_name=False).then(_shown(generate), [caption, count, seed], outputs, api_name=False)
        download.click(_shown(explorer.save_grid), None, download, api_name='save_grid')
        mix.click(_shown(interpolate), [first, second, weight, count, seed], [mixed, mix_notes], api_name='interpolate')
        add_button.click(_shown(explorer.add), [source, source_cfg], added, api_name='add_generator')
    return page


THEME_FONTS = dict(font=['system-ui', 'sans-serif'], font_mono=['ui-monospace', 'monospace'])   # no web fonts


def launch(page: gr.Blocks, host: str, port: int, block: bool = True):
    """Serve ``page`` on ``host``:``port`` (Gradio's server; nothing shared, no web fonts)."""
    return page.launch(server_name=host, server_port=port, share=False, prevent_thread_lock=not block,
                       theme=gr.themes.Default(**THEME_FONTS), show_error=True, quiet=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description='Explore trained generators in a local web page')
    parser.add_argument('sources', nargs='*', metavar='SOURCE',
                        help=f'run folders, generator files or the demo output folder (default {DEFAULT_SOURCE})')
    parser.add_argument('--cfg', dest='cfg_file', default='', help='config of generator files outside a run folder')
    parser.add_argument('--host', default='127.0.0.1', help='address to serve on (default this machine only)')
    parser.add_argument('--port', type=int, default=7860)
    parser.add_argument('overrides', nargs='*', metavar='KEY=VALUE', default=[])
    args = parser.parse_intermixed_args(argv)
    sources = [s for s in args.sources if '=' not in s] or [DEFAULT_SOURCE]
    overrides = list(args.overrides) + [s for s in args.sources if '=' in s]
    try:
        models = [load_model(s, args.cfg_file, overrides) for s in sources]
    except (ExplorerError, *USER_ERRORS) as e:
        print(f'explore.py: error: {e}', file=sys.stderr)
        return 2
    page = build_page(Explorer(models))
    print(f'explorer on http://{args.host}:{args.port} ({len(models)} generator(s)); Ctrl-C stops it')
    launch(page, args.host, args.port)
    return 0
