"""The CUB loader on the real metadata files (split pickles, boxes, class ids)."""
import pickle

import numpy as np
import pytest
import torch

from helpers import CUB_META, make_birds_layout, real_keys, write_jpeg
from datasets import (RealImageDataset, TextDataset, crop_box, load_bboxes, load_class_ids,
                      load_filenames)


@pytest.fixture(scope='module')
def real_dir(tmp_path_factory):
    """The real metadata in the birds layout (no images, no captions)."""
    import shutil
    root = tmp_path_factory.mktemp('real') / 'birds'
    (root / 'CUB_200_2011').mkdir(parents=True)
    for name in ('images.txt', 'bounding_boxes.txt'):
        shutil.copy(CUB_META / name, root / 'CUB_200_2011' / name)
    for split in ('train', 'test'):
        shutil.copytree(CUB_META / split, root / split)
    return root


def test_real_split_pickles_load_with_their_sizes(real_dir):
    train = load_filenames(str(real_dir), 'train')
    test = load_filenames(str(real_dir), 'test')
    assert (len(train), len(test)) == (8855, 2933)
    assert train[0] == '002.Laysan_Albatross/Laysan_Albatross_0002_1027'
    assert all(isinstance(k, str) for k in train + test)
    assert not set(train) & set(test)


def test_real_class_ids_are_python_ints(real_dir):
    train = load_class_ids(str(real_dir), 'train', 8855)   # numpy int64 scalars in the file
    test = load_class_ids(str(real_dir), 'test', 2933)     # plain ints in the file
    assert type(train[0]) is int and type(test[0]) is int
    assert all(type(c) is int for c in train + test)
    assert train[0] == 2 and test[0] == 1
    # The AttnGAN split: 150 training species, 50 other test species.
    assert (len(set(train)), len(set(test))) == (150, 50)
    assert not set(train) & set(test)
    assert min(train + test) == 1 and max(train + test) == 200


def test_real_boxes_parse_as_truncated_ints(real_dir):
    boxes = load_bboxes(str(real_dir))
    assert len(boxes) == 11788
    assert boxes['001.Black_footed_Albatross/Black_Footed_Albatross_0046_18'] == (60, 27, 325, 304)
    assert boxes['019.Gray_Catbird/Gray_Catbird_0067_21043'] == (202, 69, 197, 253)
    assert boxes['200.Common_Yellowthroat/Common_Yellowthroat_0055_190967'] == (20, 113, 177, 263)
    assert all(type(v) is int for box in boxes.values() for v in box)


@pytest.mark.parametrize('box, size, expected', [
    # id 1: r = int(325*0.75) = 243, cx = int(445/2) = 222, cy = int(358/2) = 179
    ((60, 27, 325, 304), (500, 375), (0, 0, 465, 375)),
    # id 2: r = int(264*0.75) = 198, cx = int(431/2) = 215, cy = 162
    ((139, 30, 153, 264), (500, 375), (17, 0, 413, 360)),
    # id 5: r = int(303*0.75) = 227, cx = 137, cy = int(403/2) = 201
    ((70, 50, 134, 303), (500, 500), (0, 0, 364, 428)),
    # id 1000: r = int(253*0.75) = 189, cx = int(601/2) = 300, cy = int(391/2) = 195
    ((202, 69, 197, 253), (500, 375), (111, 6, 489, 375)),
    # id 5000: r = int(286*0.75) = 214, cx = 218, cy = int(363/2) = 181
    ((75, 110, 286, 143), (500, 335), (4, 0, 432, 335)),
    # id 11788: r = int(263*0.75) = 197, cx = int(217/2) = 108, cy = int(489/2) = 244
    ((20, 113, 177, 263), (400, 500), (0, 47, 305, 441)),
])
def test_crop_of_real_boxes_matches_hand_computed_values(box, size, expected):
    assert crop_box(box, *size) == expected


def test_full_real_split_loads_with_an_official_style_captions_pickle(real_dir, tmp_path):
    # The metadata download ships captions.pickle; one with the right shape stands in.
    words = ['<end>', 'this', 'bird', 'has', 'red', 'wings']
    ixtoword = dict(enumerate(words))
    wordtoix = {w: i for i, w in ixtoword.items()}
    train_caps = [[1, 2, 3, 4, 5]] * (8855 * 10)
    test_caps = [[1, 2, 4]] * (2933 * 10)
    with open(real_dir / 'captions.pickle', 'wb') as f:
        pickle.dump([train_caps, test_caps, ixtoword, wordtoix], f, protocol=2)
    train = TextDataset(str(real_dir), 'train', image_size=64, check_images=False)
    test = TextDataset(str(real_dir), 'test', image_size=64, check_images=False)
    assert (len(train), len(test)) == (8855, 2933)
    assert len(train.captions) == 88550 and train.embeddings_num == 10
    assert train.n_words == 6 and train.ixtoword[0] == '<end>'
    assert all(type(c) is int for c in train.class_id)
    # An image written at a real key goes through the real crop.
    key = test.filenames[2]
    box = test.bbox[key]
    write_jpeg(real_dir / 'CUB_200_2011' / 'images' / (key + '.jpg'), (500, 400),
               crop_box(box, 500, 400))
    img, cap, length, cls, k = test[2]
    assert k == key and cls == test.class_id[2] and img.shape == (3, 64, 64)
    assert length == 3 and cap[:4].tolist() == [1, 2, 4, 0]


def test_mini_layout_item_and_eval_view(mini_birds):
    ds = TextDataset(str(mini_birds), 'train', image_size=32, augment=False)
    img, cap, length, cls, key = ds[0]
    assert key == real_keys('train')[0] and cls == 2 and type(cls) is int
    assert img.dtype == torch.float32 and img.shape == (3, 32, 32)
    assert img.min() >= -1 and img.max() <= 1
    # Red inside the official crop, blue outside: the eval view holds only the crop.
    assert img[0].mean() > 0.6 and img[2].mean() < -0.6
    # The uint8 view for FID statistics is the same picture.
    real = RealImageDataset(str(mini_birds), 'train', image_size=32)
    u8, key2 = real[0]
    assert key2 == key and u8.dtype == torch.uint8 and u8.shape == (3, 32, 32)
    assert torch.equal((u8.float() / 255 - 0.5) / 0.5, img)


def test_training_view_resizes_crops_and_flips(tmp_path):
    keys = real_keys('train')[:2]
    root = make_birds_layout(tmp_path / 'birds', keys, real_keys('test')[:1], images=False)
    from helpers import real_boxes
    # Left half of the crop red, right half green: a flip swaps them.
    box = crop_box(real_boxes()[keys[0]], 500, 400)
    from PIL import Image
    img = Image.new('RGB', (500, 400), (0, 0, 255))
    mid = (box[0] + box[2]) // 2
    img.paste((255, 0, 0), (box[0], box[1], mid, box[3]))
    img.paste((0, 255, 0), (mid, box[1], box[2], box[3]))
    for k in keys:
        path = root / 'CUB_200_2011' / 'images' / (k + '.jpg')
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path, quality=95)
    ds = TextDataset(str(root), 'train', image_size=64, augment=True)
    assert ds.transform.transforms[0].size == 76   # int(64 * 76 / 64)
    left_red = []
    for seed in range(12):
        torch.manual_seed(seed)
        x = ds[0][0]
        assert x.shape == (3, 64, 64)
        left_red.append(bool(x[0, :, :8].mean() > x[1, :, :8].mean()))
    assert any(left_red) and not all(left_red)   # both flips occur
    torch.manual_seed(3)
    a = ds[0][0]
    torch.manual_seed(3)
    assert torch.equal(a, ds[0][0])


def test_view_cache_gives_the_same_items_for_the_same_seed(mini_birds, tmp_path):
    plain = TextDataset(str(mini_birds), 'train', image_size=64)
    cached = TextDataset(str(mini_birds), 'train', image_size=64, cache_dir=str(tmp_path / 'c'))
    assert (tmp_path / 'c' / 'train_76.json').is_file()
    for i in range(len(plain)):
        torch.manual_seed(i)
        a = plain[i]
        torch.manual_seed(i)
        b = cached[i]
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2:] == b[2:]
    # A second data set reuses the cache; one for other keys rebuilds it.
    again = TextDataset(str(mini_birds), 'train', image_size=64, cache_dir=str(tmp_path / 'c'))
    assert again._cache.offsets == cached._cache.offsets
    pickle.loads(pickle.dumps(again))  # workers started with spawn get a picklable data set
    assert np.asarray(again._cache.get(0)).shape[2] == 3
