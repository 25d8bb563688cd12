"""Each bad input stops with one clear error naming the file or key and what to do."""
import os
import pickle
import re

import pytest

from helpers import make_birds_layout, real_keys
from datasets import CUB_IMAGES_URL, CUB_METADATA_URL, DataError, TextDataset


def _build(root, **kw):
    kw.setdefault('image_size', 32)
    return TextDataset(str(root), 'train', **kw)


def test_missing_data_folder_says_where_to_download(tmp_path):
    missing = tmp_path / 'nowhere' / 'birds'
    with pytest.raises(DataError) as e:
        _build(missing)
    msg = str(e.value)
    assert f"data folder '{missing}' not found" in msg and CUB_METADATA_URL in msg


def test_missing_synthetic_folder_says_how_to_create_it(tmp_path):
    with pytest.raises(DataError, match=r'python -m miscc\.data\.synthetic --out'):
        _build(tmp_path / 'syn', dataset_name='synthetic_birds')


@pytest.mark.parametrize('relpath', ['train/filenames.pickle', 'test/filenames.pickle',
                                     'CUB_200_2011/images.txt', 'CUB_200_2011/bounding_boxes.txt'])
def test_missing_metadata_file_is_named_with_the_download(mini_birds, relpath):
    os.remove(mini_birds / relpath)
    with pytest.raises(DataError) as e:
        _build(mini_birds)
    msg = str(e.value)
    assert f"metadata file '{mini_birds / relpath}' not found" in msg
    assert CUB_METADATA_URL in msg and CUB_IMAGES_URL in msg


def test_missing_caption_file_is_named(mini_birds):
    key = real_keys('test')[1]
    os.remove(mini_birds / 'text' / (key + '.txt'))
    with pytest.raises(DataError, match=re.escape(f"caption file(s) not found: "
                                                  f"'{mini_birds / 'text' / key}.txt'")):
        _build(mini_birds)


def test_missing_image_is_named_at_construction(mini_birds):
    key = real_keys('train')[4]
    path = mini_birds / 'CUB_200_2011' / 'images' / (key + '.jpg')
    os.remove(path)
    with pytest.raises(DataError) as e:
        _build(mini_birds)
    assert f"1 image(s) of the train split not found: '{path}'" in str(e.value)
    assert CUB_IMAGES_URL in str(e.value)


def test_missing_image_is_named_when_loaded(mini_birds):
    ds = _build(mini_birds, check_images=False)
    key = ds.filenames[3]
    path = mini_birds / 'CUB_200_2011' / 'images' / (key + '.jpg')
    os.remove(path)
    with pytest.raises(DataError, match=re.escape(f"image '{path}' (key '{key}') not found")):
        ds[3]


@pytest.mark.parametrize('damage', ['truncated', 'garbage'])
def test_unreadable_or_truncated_image_is_named(mini_birds, damage):
    ds = _build(mini_birds)
    key = ds.filenames[1]
    path = mini_birds / 'CUB_200_2011' / 'images' / (key + '.jpg')
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2] if damage == 'truncated' else b'not an image at all')
    with pytest.raises(DataError) as e:
        ds[1]
    msg = str(e.value)
    assert f"cannot read image '{path}' (key '{key}')" in msg
    assert 'corrupt or truncated, replace it with the original' in msg


@pytest.mark.parametrize('relpath', ['train/filenames.pickle', 'train/class_info.pickle',
                                     'captions.pickle'])
def test_corrupt_pickle_is_named(mini_birds, relpath):
    if relpath == 'captions.pickle':
        _build(mini_birds)   # writes the cache
    path = mini_birds / relpath
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(DataError, match=re.escape(f"cannot read pickle file '{path}': it is "
                                                  f"corrupt or truncated")):
        _build(mini_birds)


def test_pickle_with_a_foreign_global_is_refused_and_not_run(mini_birds, tmp_path):
    marker = tmp_path / 'ran'

    class Evil:
        def __reduce__(self):
            return (os.system, (f'touch {marker}',))
    path = mini_birds / 'train' / 'filenames.pickle'
    path.write_bytes(pickle.dumps([Evil()], protocol=2))
    with pytest.raises(DataError) as e:
        _build(mini_birds)
    assert f"refusing to unpickle '{path}'" in str(e.value)
    assert "'posix.system'" in str(e.value) or "'nt.system'" in str(e.value)
    assert not marker.exists()


def test_key_with_too_few_captions_is_listed(tmp_path):
    train, test = real_keys('train')[:3], real_keys('test')[:1]
    caps = {k: '\n'.join(f'a red bird number {i}' for i in range(10)) for k in train + test}
    caps[train[1]] = 'only one caption\n\n\n...\n'
    root = make_birds_layout(tmp_path / 'birds', train, test, captions=caps)
    with pytest.raises(DataError) as e:
        _build(root)
    msg = str(e.value)
    assert "1 key(s) have fewer than CAPTIONS_PER_IMAGE = 10 captions" in msg
    assert f"'{train[1]}' (1)" in msg and 'TEXT.CAPTIONS_PER_IMAGE' in msg
    assert not (root / 'captions.pickle').exists()


def test_captions_pickle_of_another_caption_count_is_refused(mini_birds):
    _build(mini_birds)   # 10 captions per image
    with pytest.raises(DataError) as e:
        _build(mini_birds, captions_per_image=5)
    msg = str(e.value)
    assert "holds 60 train captions, but train/filenames.pickle lists 6 keys x " \
           "CAPTIONS_PER_IMAGE 5 = 30" in msg and 'delete it to rebuild' in msg


def test_empty_vocabulary(tmp_path):
    # Words made only of non-ASCII letters leave empty captions and no vocabulary.
    train, test = real_keys('train')[:2], real_keys('test')[:1]
    caps = {k: '鳥\n' * 10 for k in train + test}
    root = make_birds_layout(tmp_path / 'birds', train, test, captions=caps)
    with pytest.raises(DataError, match=r"empty vocabulary for '.*': no caption holds a word"):
        _build(root)
    # The same for a cache holding no word.
    with open(root / 'captions.pickle', 'wb') as f:
        pickle.dump([[[]] * 20, [[]] * 10, {0: '<end>'}, {'<end>': 0}], f, protocol=2)
    with pytest.raises(DataError, match='empty vocabulary'):
        _build(root)


def test_vocabulary_size_must_match_the_text_encoder(mini_birds):
    n = _build(mini_birds).n_words
    assert _build(mini_birds, expected_vocab_size=n).n_words == n
    with pytest.raises(DataError) as e:
        _build(mini_birds, expected_vocab_size=5450)
    msg = str(e.value)
    assert f"'{mini_birds / 'captions.pickle'}' has a vocabulary of {n} words but the text " \
           f"encoder expects 5450" in msg
    with pytest.raises(DataError, match=re.escape(f"but the text encoder 'enc/text_encoder200.pth' expects 5450")):
        _build(mini_birds, expected_vocab_size=5450, text_encoder='enc/text_encoder200.pth')


def test_class_info_of_another_length_is_refused(mini_birds):
    with open(mini_birds / 'train' / 'class_info.pickle', 'wb') as f:
        pickle.dump([1, 2, 3], f, protocol=2)
    with pytest.raises(DataError, match=r"holds 3 class ids but .* lists 6 keys"):
        _build(mini_birds)


def test_edited_caption_file_rebuilds_the_cache_with_a_warning(mini_birds):
    first = _build(mini_birds)
    assert 'zebraword' not in first.wordtoix
    path = mini_birds / 'text' / (first.filenames[0] + '.txt')
    path.write_text('a zebraword bird\n' * 10)
    with pytest.warns(UserWarning, match=re.escape(f"caption files under '{mini_birds / 'text'}' changed since")):
        again = _build(mini_birds)
    assert 'zebraword' in again.wordtoix                                   # was the stale vocabulary
    assert again.captions[0] == [again.wordtoix[w] for w in ('a', 'zebraword', 'bird')]
    with open(mini_birds / 'captions.pickle', 'rb') as f:                 # the rebuilt cache is kept
        assert len(pickle.load(f)) == 5
    # a cache without the record (the official download's layout) is used as it is
    test_captions = TextDataset(str(mini_birds), 'test', image_size=32).captions
    with open(mini_birds / 'captions.pickle', 'wb') as f:
        pickle.dump([first.captions, test_captions, first.ixtoword, first.wordtoix], f, protocol=2)
    assert 'zebraword' not in _build(mini_birds).wordtoix


def test_bounding_box_outside_the_image_is_named(mini_birds):
    ds = _build(mini_birds)
    key = ds.filenames[2]
    path = mini_birds / 'CUB_200_2011' / 'images' / (key + '.jpg')
    from PIL import Image
    Image.new('RGB', (1, 1)).save(path)            # a 1 x 1 image: the box starts at x = 60 or more
    ds.bbox[key] = (600, 500, 40, 30)
    with pytest.raises(DataError) as e:             # was PIL's "Coordinate 'right' is less than 'left'"
        ds[2]
    msg = str(e.value)
    assert f"image '{path}' (key '{key}') is 1 x 1 px, but its bounding box (600, 500, 40, 30)" in msg
    assert 'bounding_boxes.txt' in msg


def test_grayscale_and_cmyk_images_are_read_as_rgb(mini_birds):
    from PIL import Image
    ds = _build(mini_birds)
    for i, mode, colour in ((0, 'L', 90), (1, 'CMYK', (10, 20, 30, 0))):
        Image.new(mode, (500, 400), colour).save(mini_birds / 'CUB_200_2011' / 'images' / (ds.filenames[i] + '.jpg'))
        assert ds[i][0].shape == (3, 32, 32)


def test_caption_bytes_that_are_not_utf8_are_named_with_the_line(tmp_path):
    train, test = real_keys('train')[:2], real_keys('test')[:1]
    root = make_birds_layout(tmp_path / 'birds', train, test)
    path = root / 'text' / (train[1] + '.txt')
    lines = path.read_bytes().split(b'\n')
    lines[1] = b'a bi\xffrd with wings'
    path.write_bytes(b'\n'.join(lines))
    with pytest.raises(DataError) as e:            # was dropped silently: 'bi' and 'rd' became words
        _build(root)
    assert f"caption file '{path}' line 2: byte b'\\xff' (byte 5 of the line) is not UTF-8" in str(e.value)
    assert not (root / 'captions.pickle').exists()
