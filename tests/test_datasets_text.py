"""Caption pipeline: tokens, vocabulary cache, indices, padding, subsampling, batches."""
import os
import pickle
import warnings

import numpy as np
import pytest
import torch

from helpers import make_birds_layout, real_keys
from datasets import (Batch, TextDataset, build_dataset, build_vocabulary, collate_sorted,
                      encode_caption, pad_caption, read_caption_file, tokenize)
from miscc.core.config import default_config
from miscc.evaluation.generation import encode_texts


def test_tokenize_like_the_official_code():
    assert tokenize('This bird has an orange bill, a white belly and white eyebrows.') == \
        ['this', 'bird', 'has', 'an', 'orange', 'bill', 'a', 'white', 'belly', 'and', 'white', 'eyebrows']
    assert tokenize("brown/black striped wings; bird's BEAK") == \
        ['brown', 'black', 'striped', 'wings', 'bird', 's', 'beak']
    # Non-ASCII letters are dropped from tokens, tokens left empty vanish, and the pairs of
    # replacement characters of some CUB files separate words.
    assert tokenize('a naïve café\ufffd\ufffdbird 日本 x_2') == ['a', 'nave', 'caf', 'bird', 'x_2']
    assert tokenize('...!') == []


def test_read_caption_file_skips_empty_and_wordless_lines_and_stops_at_the_count(tmp_path):
    path = tmp_path / 'k.txt'
    lines = [f'caption number {i}' for i in range(12)]
    path.write_text('\n'.join(lines[:2] + ['', '  .', ''] + lines[2:]) + '\n', encoding='utf-8')
    caps = read_caption_file(str(path), 10)
    assert len(caps) == 10
    assert caps[0] == ['caption', 'number', '0'] and caps[9] == ['caption', 'number', '9']
    assert read_caption_file(str(path), 20)[-1] == ['caption', 'number', '11']


def test_vocabulary_indices_by_first_appearance_with_end_at_zero():
    train, test, ixtoword, wordtoix = build_vocabulary([['a', 'b'], ['b', 'c']], [['d', 'a']])
    assert ixtoword == {0: '<end>', 1: 'a', 2: 'b', 3: 'c', 4: 'd'}
    assert wordtoix == {'<end>': 0, 'a': 1, 'b': 2, 'c': 3, 'd': 4}
    assert train == [[1, 2], [2, 3]] and test == [[4, 1]]


def _captions(keys, texts):
    return {k: t for k, t in zip(keys, texts)}


@pytest.fixture
def tiny(tmp_path):
    """Two train keys and one test key with hand-written captions (2 per image)."""
    train, test = real_keys('train')[:2], real_keys('test')[:1]
    texts = ['The bird is RED.\n\na red belly\n', 'a small blue bird\nblue wings\n',
             'a red bird with blue wings\nextra line\n']
    root = make_birds_layout(tmp_path / 'birds', train, test, captions=_captions(train + test, texts))
    return root


def test_vocabulary_cache_layout_matches_the_official_one(tiny):
    ds = TextDataset(str(tiny), 'train', image_size=32, captions_per_image=2, words_num=4)
    # words in order of appearance over train then test captions
    assert ds.ixtoword == {0: '<end>', 1: 'the', 2: 'bird', 3: 'is', 4: 'red', 5: 'a',
                           6: 'belly', 7: 'small', 8: 'blue', 9: 'wings', 10: 'with',
                           11: 'extra', 12: 'line'}
    assert ds.n_words == 13
    assert ds.captions == [[1, 2, 3, 4], [5, 4, 6], [5, 7, 8, 2], [8, 9]]
    path = tiny / 'captions.pickle'
    raw = path.read_bytes()
    assert raw[:2] == b'\x80\x02'   # protocol 2, readable by the official (Python 2) code
    x = pickle.loads(raw)
    # the official code reads x[0..3]; x[4] records the caption files the cache was built from
    assert isinstance(x, list) and len(x) == 5 and set(x[4]) == {'text_files'}
    assert x[0] == ds.captions and x[1] == [[5, 4, 2, 10, 8, 9], [11, 12]]
    assert x[2] == ds.ixtoword and x[3] == ds.wordtoix


def test_cached_vocabulary_is_used_without_the_text_files(tiny):
    first = TextDataset(str(tiny), 'test', image_size=32, captions_per_image=2)
    assert first.captions[0] == [5, 4, 2, 10, 8, 9]   # 'a red bird with blue wings'
    for dirpath, _, files in os.walk(tiny / 'text'):
        for name in files:
            os.remove(os.path.join(dirpath, name))
    again = TextDataset(str(tiny), 'test', image_size=32, captions_per_image=2)
    assert again.captions == first.captions and again.wordtoix == first.wordtoix


def test_an_official_captions_pickle_is_loaded_as_it_is(tiny):
    # Python 2 wrote the official file with its own (hash) word order.
    ixtoword = {0: '<end>', 1: 'wings', 2: 'red', 3: 'bird'}
    wordtoix = {w: i for i, w in ixtoword.items()}
    x = [[[3, 2], [1], [2], [3]], [[2, 3, 1], [1]], ixtoword, wordtoix]
    with open(tiny / 'captions.pickle', 'wb') as f:
        pickle.dump(x, f, protocol=2)
    ds = TextDataset(str(tiny), 'train', image_size=32, captions_per_image=2)
    assert ds.ixtoword == ixtoword and ds.captions == x[0] and ds.n_words == 4


def test_pad_caption_pads_with_zeros_and_reports_the_length():
    cap, n = pad_caption([7, 3, 9], 5)
    assert cap.dtype == torch.long and cap.tolist() == [7, 3, 9, 0, 0] and n == 3
    cap, n = pad_caption(list(range(1, 19)), 18)
    assert cap.tolist() == list(range(1, 19)) and n == 18


def test_long_caption_keeps_words_num_random_words_in_order():
    words = list(range(101, 126))   # 25 distinct word indices, increasing
    dropped = set()
    for seed in range(60):
        cap, n = pad_caption(words, 18, np.random.default_rng(seed))
        kept = cap.tolist()
        assert n == 18 and len(kept) == 18
        assert kept == sorted(kept) and len(set(kept)) == 18 and set(kept) <= set(words)
        dropped |= set(words) - set(kept)
        again, _ = pad_caption(words, 18, np.random.default_rng(seed))
        assert again.tolist() == kept   # the same generator state, the same words
    assert dropped == set(words)        # every position can be dropped
    # Without a generator, torch's global one decides.
    torch.manual_seed(0)
    a = pad_caption(words, 18)[0]
    torch.manual_seed(0)
    assert torch.equal(a, pad_caption(words, 18)[0])


def test_caption_tensor_numbers_captions_per_key(tiny):
    ds = TextDataset(str(tiny), 'train', image_size=32, captions_per_image=2, words_num=3)
    cap, n = ds.caption_tensor(1 * 2 + 1)   # second key, second caption: 'blue wings'
    assert cap.tolist() == [8, 9, 0] and n == 2
    cap, n = ds.caption_tensor(2, np.random.default_rng(0))   # 'a small blue bird' -> 3 of 4
    assert n == 3 and cap.tolist() in ([5, 7, 8], [5, 7, 2], [5, 8, 2], [7, 8, 2])


def test_items_pick_a_random_caption_of_their_image(tiny):
    ds = TextDataset(str(tiny), 'train', image_size=32, captions_per_image=2, words_num=6)
    seen = set()
    for seed in range(20):
        torch.manual_seed(seed)
        img, cap, n, cls, key = ds[1]
        assert key == ds.filenames[1] and img.shape == (3, 32, 32)
        seen.add(tuple(cap[:n].tolist()))
        assert cap[n:].eq(0).all()
    assert seen == {(5, 7, 8, 2), (8, 9)}


def test_collate_sorts_by_caption_length_longest_first():
    def item(i, length):
        cap = torch.zeros(5, dtype=torch.long)
        cap[:length] = torch.arange(1, length + 1)
        return torch.full((3, 4, 4), float(i)), cap, length, 10 + i, f'k{i}'
    batch = collate_sorted([item(0, 3), item(1, 5), item(2, 4), item(3, 5)])
    assert isinstance(batch, Batch)
    assert batch.cap_lens.tolist() == [5, 5, 4, 3] and batch.cap_lens.dtype == torch.long
    assert batch.keys == ['k1', 'k3', 'k2', 'k0']          # ties keep their order
    assert batch.class_ids.tolist() == [11, 13, 12, 10]
    assert batch.images[:, 0, 0, 0].tolist() == [1.0, 3.0, 2.0, 0.0]
    assert batch.captions.shape == (4, 5) and batch.captions[3].tolist() == [1, 2, 3, 0, 0]


def test_loader_batches_are_ready_for_a_packed_lstm(tiny):
    ds = TextDataset(str(tiny), 'train', image_size=32, captions_per_image=2, words_num=6)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate_sorted)
    batch = next(iter(loader))
    assert batch.images.shape == (2, 3, 32, 32) and batch.captions.shape == (2, 6)
    assert batch.cap_lens[0] >= batch.cap_lens[1]
    emb = torch.nn.Embedding(ds.n_words, 4)(batch.captions)
    torch.nn.utils.rnn.pack_padded_sequence(emb, batch.cap_lens, batch_first=True)


def test_encode_caption_drops_and_reports_unknown_words():
    wordtoix = {'<end>': 0, 'this': 1, 'bird': 2, 'is': 3, 'red': 4}
    cap, n, unknown = encode_caption('This bird is RED, zorblax!', wordtoix, 6)
    assert cap.tolist() == [1, 2, 3, 4, 0, 0] and n == 4 and unknown == ['zorblax']
    cap, n, unknown = encode_caption('red ' * 8, wordtoix, 5)   # truncated to the first 5
    assert cap.tolist() == [4] * 5 and n == 5 and unknown == []
    cap, n, unknown = encode_caption('<end> qq', wordtoix, 3)  # '<end>' is not a word
    assert n == 0 and cap.tolist() == [0, 0, 0] and unknown == ['end', 'qq']


def _coco_layout(root, image_folder):
    """A COCO-style folder: 5 captions per image, no boxes, no class ids."""
    from helpers import write_jpeg
    keys = {'train': ['COCO_train2014_000000000009', 'COCO_train2014_000000000025'],
            'test': ['COCO_val2014_000000000042']}
    for split, names in keys.items():
        (root / split).mkdir(parents=True)
        with open(root / split / 'filenames.pickle', 'wb') as f:
            pickle.dump(names, f, protocol=2)
        folder = image_folder(split)
        for i, k in enumerate(names):
            (root / 'text').mkdir(exist_ok=True)
            (root / 'text' / (k + '.txt')).write_text(
                ''.join(f'A plate of food number {j}.\n' for j in range(5 + i)))
            write_jpeg(folder / (k + '.jpg'), (64, 48), (0, 0, 32, 48))
    return keys


def test_coco_layout_images_folder_no_box_five_captions(tmp_path):
    root = tmp_path / 'coco'
    keys = _coco_layout(root, lambda split: root / 'images')
    ds = TextDataset(str(root), 'train', image_size=16, captions_per_image=5,
                     dataset_name='coco', augment=False)
    assert ds.bbox is None and ds.filenames == keys['train'] and ds.class_id == [0, 1]
    # 'a plate of food number 0..4'; the sixth line of the second file is not read
    assert len(ds.captions) == 10 and ds.n_words == 11
    assert ds.caption_tensor(9)[0][:7].tolist() == [1, 2, 3, 4, 5, 10, 0]
    img = ds[0][0]
    # no crop: the red left half and the blue right half of the 64 x 48 picture both remain
    assert img[0, :, :6].mean() > 0.6 and img[2, :, -6:].mean() > 0.6


def test_coco_official_folders_and_configured_folders(tmp_path):
    root = tmp_path / 'coco'
    _coco_layout(root, lambda split: root / ('train2014' if split == 'train' else 'val2014'))
    test = TextDataset(str(root), 'test', image_size=16, captions_per_image=5, dataset_name='coco')
    assert test.image_dir == str(root / 'val2014') and test[0][4] == 'COCO_val2014_000000000042'
    cfg = default_config()
    cfg.merge({'DATASET_NAME': 'coco',
               'TEXT': {'CAPTIONS_PER_IMAGE': 5}, 'TREE': {'BASE_SIZE': 16}})
    import shutil
    shutil.move(str(root / 'train2014'), str(tmp_path / 'train_images'))
    shutil.move(str(root), str(root.parent / 'elsewhere'))
    cfg.DATA_DIR = str(tmp_path / 'elsewhere')
    cfg.DATA.TRAIN_IMAGE_DIR = str(tmp_path / 'train_images')
    train = build_dataset(cfg, 'train')
    assert train.image_dir == str(tmp_path / 'train_images') and len(train) == 2
    assert train[1][0].shape == (3, 16, 16)


def test_typed_captions_warn_when_known_words_are_cut():
    wordtoix = {'<end>': 0, 'red': 1, 'bird': 2}
    with pytest.warns(UserWarning, match="has more than 3 known words; truncated to the first 3"):
        caps, lens, _ = encode_texts(['red bird red bird'], wordtoix, 3)
    assert lens.tolist() == [3] and caps[0].tolist() == [1, 2, 1]
    with warnings.catch_warnings(record=True) as caught:        # 3 known + 1 unknown: nothing is cut
        warnings.simplefilter('always')
        _, lens, _ = encode_texts(['red zebra bird red'], wordtoix, 3)
    assert lens.tolist() == [3] and [str(w.message) for w in caught] == [
        "caption 'red zebra bird red': unknown words dropped: zebra"]
