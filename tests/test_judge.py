"""The attribute judge (miscc/evaluation/judge.py), trained on a small synthetic set: it reads
real birds near its ceiling, fails on birds whose colours are swapped and on captions of other
birds, is trained once and cached per data set, and says which attributes it cannot read."""
import os

import pytest
import torch

from datasets import RealImageDataset
from miscc.core.config import ConfigError
from miscc.data.synthetic import make_synthetic_birds, read_attributes
from miscc.evaluation import judge as jd

pytestmark = pytest.mark.slow
SIZE = 32


@pytest.fixture(scope='module')
def birds(tmp_path_factory):
    root = tmp_path_factory.mktemp('judge') / 'birds'
    make_synthetic_birds(str(root), num_train=2000, num_test=200, image_size=128, seed=5, workers=2)
    return root


@pytest.fixture(scope='module')
def judge(birds):
    return jd.load_judge(str(birds), SIZE, log=None)


def _test_split(birds):
    data = RealImageDataset(str(birds), 'test', image_size=SIZE, dataset_name='synthetic_birds')
    images, keys = zip(*(data[i] for i in range(len(data))))
    captions = [(birds / 'text' / f'{k}.txt').read_text().splitlines()[0] for k in keys]
    return torch.stack(images), list(keys), captions


def test_real_birds_score_their_ceiling(birds, judge):
    for a in ('body', 'wing', 'head', 'background', 'facing'):
        assert judge.ceiling[a] >= 0.9, (a, judge.ceiling)
    assert judge.ceiling['beak'] < jd.CEILING_MIN and not judge.judgeable('beak')    # 1-2 px at 32 px
    images, keys, captions = _test_split(birds)
    scores = jd.attribute_scores(judge, images, captions, keys, read_attributes(str(birds)), images)
    for a, s in scores['attributes'].items():
        if s['judgeable']:
            assert abs(s['accuracy'] - s['ceiling']) <= 0.05, (a, s)
        else:
            assert s['accuracy'] is None
    assert scores['attributes']['body']['captions'] == len(keys)           # every caption names the body
    assert scores['every_named_right'] >= 0.8
    assert scores['frechet_distance'] == pytest.approx(0.0, abs=1e-3)      # the same images on both sides
    assert scores['species_score']['generated'] == scores['species_score']['real']


def test_swapped_colours_and_other_birds_captions_fail(birds, judge):
    images, keys, captions = _test_split(birds)
    attrs = read_attributes(str(birds))
    swapped = images[:, [2, 0, 1]]                                         # red -> green, green -> blue, ...
    scores = jd.attribute_scores(judge, swapped, captions, keys, attrs, images)
    assert scores['attributes']['body']['accuracy'] <= 0.3 and scores['every_named_right'] <= 0.2
    assert scores['frechet_distance'] > 1.0
    shifted = captions[1:] + captions[:1]                                  # each image under the next bird's caption
    other = jd.attribute_scores(judge, images, shifted, keys[1:] + keys[:1], attrs, images)
    assert other['attributes']['body']['accuracy'] <= 0.3


def test_trained_once_and_cached_per_data_set(birds, judge, tmp_path):
    path = jd.judge_path(str(birds), SIZE)
    assert judge.path == path and os.path.isfile(path)
    before = os.path.getmtime(path)
    again = jd.load_judge(str(birds), SIZE, log=None)                      # read, not trained again
    assert os.path.getmtime(path) == before and again.ceiling == judge.ceiling
    assert all(torch.equal(a, b) for a, b in zip(again.model.state_dict().values(), judge.model.state_dict().values()))
    assert jd.judge_path(str(birds), 64) != path                           # another size, another judge
    other = tmp_path / 'other'
    make_synthetic_birds(str(other), num_train=4, num_test=2, image_size=128, seed=6, workers=1)
    assert os.path.basename(jd.judge_path(str(other), SIZE)) != os.path.basename(path)   # another data set
    with pytest.raises(ConfigError, match="is not a synthetic-birds folder"):
        jd.judge_path(str(tmp_path), SIZE)
