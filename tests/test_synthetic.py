"""The synthetic birds: specification, determinism, layout, captions vs attributes."""
import filecmp
import json
import os
import pickle

import numpy as np
import pytest

from datasets import TextDataset, build_dataset, load_bboxes, tokenize
from miscc.core.config import default_config
from miscc.data.safe_pickle import safe_load
from miscc.data.synthetic import (BACKGROUNDS, LABELS, PALETTE, class_folder, class_pairs,
                             ensure_synthetic_birds, main, make_captions, make_synthetic_birds,
                             caption_attributes, judge_body_colour, render_bird, sample_attributes)

PART_WORDS = {'wing': {'wings', 'wing'}, 'head': {'crown', 'head'}, 'beak': {'beak', 'bill'},
              'body': {'belly', 'breast', 'body'}}
SIZE_WORDS = {'small': {'small', 'tiny', 'little'}, 'large': {'large', 'big'}}


def _attributes(root):
    with open(root / 'attributes.jsonl', encoding='utf-8') as f:
        return [json.loads(line) for line in f]


def test_palette_and_backgrounds_are_the_specified_values():
    assert PALETTE == {'red': (200, 30, 30), 'orange': (240, 130, 20), 'yellow': (240, 220, 40),
                       'green': (40, 150, 50), 'blue': (40, 70, 210), 'purple': (120, 40, 160),
                       'brown': (110, 70, 30), 'black': (25, 25, 25), 'white': (240, 240, 240),
                       'grey': (130, 130, 130)}
    assert BACKGROUNDS == {'sky': (150, 185, 220), 'dusk': (205, 160, 170), 'fog': (185, 195, 160)}
    assert len(class_pairs()) == 90 and class_folder('red', 'orange') == '001.Red_bodied_Orange_winged'


def test_layout_is_the_cub_layout(synthetic_small):
    root = synthetic_small
    attrs = _attributes(root)
    assert len(attrs) == 32
    images_txt = (root / 'CUB_200_2011' / 'images.txt').read_text().splitlines()
    assert images_txt[0] == f"1 {attrs[0]['key']}.jpg"
    boxes_txt = (root / 'CUB_200_2011' / 'bounding_boxes.txt').read_text().splitlines()
    assert len(boxes_txt) == 32 and all(v.endswith('.0') for v in boxes_txt[0].split()[1:])
    train = safe_load(root / 'train' / 'filenames.pickle')
    test = safe_load(root / 'test' / 'filenames.pickle')
    assert train == [a['key'] for a in attrs[:24]] and test == [a['key'] for a in attrs[24:]]
    train_ids = safe_load(root / 'train' / 'class_info.pickle')
    assert isinstance(train_ids[0], np.int64)   # like CUB's numpy class ids
    pairs = class_pairs()
    assert [int(c) for c in train_ids] == [pairs.index((a['body'], a['wing'])) + 1 for a in attrs[:24]]
    assert (root / 'train' / 'filenames.pickle').read_bytes()[:2] == b'\x80\x02'
    with open(root / 'train' / 'class_info.pickle', 'rb') as f:   # plain pickle reads it too
        assert int(pickle.load(f, encoding='bytes')[0]) == int(train_ids[0])
    for a in attrs:
        assert set(a) == {'key', 'body', 'wing', 'head', 'beak', 'size', 'background', 'facing'}
        assert a['key'].split('/')[0] == class_folder(a['body'], a['wing'])
        assert a['wing'] != a['body'] and a['beak'] != a['head']
        assert a['size'] in ('small', 'large') and a['facing'] in ('left', 'right')
        assert a['background'] in BACKGROUNDS
        img = root / 'CUB_200_2011' / 'images' / (a['key'] + '.jpg')
        assert img.read_bytes()[:2] == b'\xff\xd8'
        lines = (root / 'text' / (a['key'] + '.txt')).read_text().splitlines()
        assert len(lines) == 10 and len(set(lines)) == 10


def test_same_seed_same_bytes_other_seed_other_bytes(synthetic_small, tmp_path):
    again = make_synthetic_birds(str(tmp_path / 'a'), 24, 8, 128, seed=7, workers=2)
    # other tests load the shared set, which adds captions.pickle and caches beside the files
    derived = ['captions.pickle', 'cache', 'fid_cache']
    cmp = filecmp.dircmp(synthetic_small, again, ignore=derived)

    def identical(c):
        assert not c.left_only and not c.right_only and not c.diff_files and not c.funny_files
        _, mismatch, errors = filecmp.cmpfiles(c.left, c.right, c.common_files, shallow=False)
        assert not mismatch and not errors
        for sub in c.subdirs.values():
            identical(sub)
    identical(cmp)
    other = make_synthetic_birds(str(tmp_path / 'b'), 24, 8, 128, seed=8, workers=1)
    assert (tmp_path / 'b' / 'attributes.jsonl').read_bytes() != \
        (synthetic_small / 'attributes.jsonl').read_bytes()
    assert os.path.isdir(other)


def test_every_caption_agrees_with_the_attributes(synthetic_small):
    for a in _attributes(synthetic_small):
        for line in (synthetic_small / 'text' / (a['key'] + '.txt')).read_text().splitlines():
            tokens = tokenize(line)
            assert a['body'] in tokens, line
            colours = {t for t in tokens if t in PALETTE}
            assert colours <= {a['body'], a['wing'], a['head'], a['beak']}, line
            for i, t in enumerate(tokens[1:], 1):   # a colour right before a part is that part's
                for part, words in PART_WORDS.items():
                    if t in words and tokens[i - 1] in PALETTE:
                        assert tokens[i - 1] == a[part], line
            mentioned = {p for p in ('wing', 'head', 'beak') if PART_WORDS[p] & set(tokens)}
            sizes = (SIZE_WORDS['small'] | SIZE_WORDS['large']) & set(tokens)
            if sizes:
                assert sizes <= SIZE_WORDS[a['size']], line
                mentioned.add('size')
            assert 1 <= len(mentioned) <= 3, line


def test_caption_attributes_read_exactly_what_each_caption_names(synthetic_small):
    """Every caption: the body colour, and exactly the parts (and size) it mentions, each with the
    bird's own value."""
    for a in _attributes(synthetic_small):
        for line in (synthetic_small / 'text' / (a['key'] + '.txt')).read_text().splitlines():
            named = caption_attributes(line)
            tokens = set(tokenize(line))
            mentioned = {p for p in ('wing', 'head', 'beak') if PART_WORDS[p] & tokens}
            if (SIZE_WORDS['small'] | SIZE_WORDS['large']) & tokens:
                mentioned.add('size')
            assert set(named) == mentioned | {'body'}, line
            assert all(a[k] == v for k, v in named.items()), line
    assert caption_attributes('This tiny bird is mostly Green, with a blue crown.') == {
        'size': 'small', 'body': 'green', 'head': 'blue'}
    assert caption_attributes('a bird') == {}


def test_captions_vary_in_wording():
    rng = np.random.default_rng(0)
    attrs = {'body': 'orange', 'wing': 'blue', 'head': 'black', 'beak': 'yellow', 'size': 'large',
             'background': 'sky', 'facing': 'left'}
    words = set()
    for _ in range(20):
        for cap in make_captions(attrs, rng):
            words |= set(tokenize(cap))
    assert {'belly', 'breast', 'body', 'bill', 'beak', 'crown', 'head', 'large', 'big'} <= words
    assert 'an' in words   # 'an orange belly'


@pytest.mark.parametrize('seed', range(12))
def test_rendered_bird_follows_the_specification(seed):
    rng = np.random.default_rng(seed)
    attrs = sample_attributes(rng)
    S = 128
    img, labels, (x, y, w, h) = render_bird(attrs, rng, S)
    arr = np.asarray(img).astype(int)
    assert img.size == (S, S) and labels.shape == (S, S)
    bird = labels > 0
    # The body covers at least half of the bird, which stays clear of the border.
    assert (labels == LABELS['body']).sum() >= 0.5 * bird.sum()
    ys, xs = np.nonzero(bird)
    m = int(0.04 * S)
    assert xs.min() >= m and ys.min() >= m and xs.max() < S - m and ys.max() < S - m
    assert x <= xs.min() and y <= ys.min() and x + w > xs.max() and y + h > ys.max()
    # Flat palette colours on the parts.
    for part in ('body', 'wing', 'head'):
        inner = labels == LABELS[part]
        if inner.sum() > 20:
            assert tuple(np.median(arr[inner], axis=0).astype(int)) == PALETTE[attrs[part]]
    # Background: the centre colour, +-15 gradient and +-8 noise at most.
    far = np.ones((S, S), bool)
    far[max(y - 2, 0):y + h + 2, max(x - 2, 0):x + w + 2] = False
    dev = np.abs(arr[far] - np.array(BACKGROUNDS[attrs['background']]))
    assert dev.max() <= 23
    # Facing: the beak lies on the facing side of the body centre.
    beak_x = np.nonzero(labels == LABELS['beak'])[1].mean()
    body_x = np.nonzero(labels == LABELS['body'])[1].mean()
    assert (beak_x > body_x) == (attrs['facing'] == 'right')


def test_synthetic_set_loads_through_the_cub_loader(synthetic_small):
    ds = TextDataset(str(synthetic_small), 'train', image_size=64, dataset_name='synthetic_birds')
    attrs = {a['key']: a for a in _attributes(synthetic_small)}
    assert len(ds) == 24 and ds.embeddings_num == 10
    assert ds.class_id == [class_pairs().index((attrs[k]['body'], attrs[k]['wing'])) + 1
                           for k in ds.filenames]
    img, cap, n, cls, key = ds[5]
    assert img.shape == (3, 64, 64) and -1 <= img.min() and img.max() <= 1
    assert attrs[key]['body'] in [ds.ixtoword[int(i)] for i in cap[:n]] or n == 18
    # Each written box is the rendered bird's tight box (image i is drawn from seed [7, i]).
    boxes = load_bboxes(str(synthetic_small))
    assert set(boxes) == set(attrs)
    for i, key in enumerate(list(attrs)[:4]):
        rng = np.random.default_rng([7, i])
        drawn = sample_attributes(rng)
        assert all(drawn[k] == attrs[key][k] for k in drawn)
        assert render_bird(drawn, rng, 128)[2] == boxes[key]
    same = TextDataset(str(synthetic_small), 'test', image_size=64, dataset_name='birds')
    assert len(same) == 8


def test_existing_sets_are_never_overwritten(synthetic_small, tmp_path):
    before = (synthetic_small / 'attributes.jsonl').stat().st_mtime_ns
    assert make_synthetic_birds(str(synthetic_small), 24, 8, 128, seed=7) == str(synthetic_small)
    assert (synthetic_small / 'attributes.jsonl').stat().st_mtime_ns == before
    with pytest.raises(FileExistsError, match='already holds a synthetic set'):
        make_synthetic_birds(str(synthetic_small), 24, 8, 128, seed=9)
    other = tmp_path / 'other'
    other.mkdir()
    (other / 'notes.txt').write_text('mine')
    with pytest.raises(FileExistsError, match='already holds other files'):
        make_synthetic_birds(str(other), 2, 1, 128)
    assert (other / 'notes.txt').read_text() == 'mine'
    with pytest.warns(UserWarning, match='the config asks for'):
        ensure_synthetic_birds(str(synthetic_small), 24, 8, 128, seed=9)


def test_config_creates_the_missing_synthetic_set(tmp_path, capsys):
    cfg = default_config()
    cfg.DATASET_NAME = 'synthetic_birds'
    cfg.DATA_DIR = str(tmp_path / 'data' / 'synthetic_birds')
    cfg.merge({'SYNTHETIC': {'NUM_TRAIN': 6, 'NUM_TEST': 3, 'IMAGE_SIZE': 128, 'SEED': 1},
               'TREE': {'BASE_SIZE': 64}})
    assert default_config().SYNTHETIC.NUM_TRAIN == 2000 and default_config().SYNTHETIC.NUM_TEST == 500
    ds = build_dataset(cfg, 'test', augment=False)
    assert len(ds) == 3 and ds.split == 'test' and ds[0][0].shape == (3, 64, 64)
    assert (tmp_path / 'data' / 'synthetic_birds' / 'synthetic.json').is_file()
    assert not [p for p in (tmp_path / 'data').iterdir() if p.name.startswith('.')]  # no temp left
    train = build_dataset(cfg, 'train')
    assert len(train) == 6 and train.n_words == ds.n_words


def test_command_line(tmp_path, capsys):
    out = tmp_path / 'cli'
    assert main(['--out', str(out), '--train', '3', '--test', '2', '--size', '128', '--seed', '4']) == 0
    assert len(_attributes(out)) == 5
    assert '3 train / 2 test images' in capsys.readouterr().out
    assert main(['--out', str(out), '--train', '3', '--test', '2', '--size', '128', '--seed', '5']) == 2
    assert 'already holds' in capsys.readouterr().err
    assert main(['--out', str(tmp_path / 'x'), '--size', '64']) == 2


def test_body_colour_judge_on_hand_made_and_real_images(synthetic_small):
    from datasets import RealImageDataset
    sky = np.zeros((3, 20, 20, 3), np.uint8) + np.array(BACKGROUNDS['sky'], np.uint8)
    sky[0, 2:14, 2:14] = PALETTE['green']       # 144 green pixels beat 36 red ones
    sky[0, 14:20, 14:20] = PALETTE['red']
    sky[1, 5:8, 5:8] = (PALETTE['purple'][0] + 20, PALETTE['purple'][1] - 10, PALETTE['purple'][2])
    sky[2, :10] = (255, 0, 255)                  # far from every colour: ignored
    assert judge_body_colour(sky) == ['green', 'purple', None]
    with pytest.raises(ValueError, match='N x H x W x 3'):
        judge_body_colour(sky[0])
    # on the real images, at the training sizes (the demo's 32 px too), it reads the body colour of every bird
    attrs = {a['key']: a['body'] for a in _attributes(synthetic_small)}
    for size in (32, 64, 128):
        data = RealImageDataset(str(synthetic_small), 'train', image_size=size, dataset_name='synthetic_birds')
        images, keys = zip(*(data[i] for i in range(len(data))))
        judged = judge_body_colour(np.stack([im.permute(1, 2, 0).numpy() for im in images]))
        assert judged == [attrs[k] for k in keys]
