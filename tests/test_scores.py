"""Evaluation: IS and Frechet distance against closed forms, the reference-statistics cache,
bad inputs, and eval_IS.py / eval_FID.py end to end on synthetic data with a random extractor."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import miscc.evaluation.scores as evaluation
from miscc.cli import eval_main
from miscc.core.config import load_config
from miscc.evaluation.metrics import frechet_distance, inception_score
from miscc.evaluation.scores import reference_statistics
from miscc.data.errors import DataError
from miscc.families import build_networks

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- formulas
def test_inception_score_of_known_predictions():
    classes, splits = 5, 10
    onehot = torch.eye(classes).repeat(splits, 1) * 60.0          # every split: one image per class
    mean, std = inception_score(onehot, splits)
    assert mean == pytest.approx(classes, rel=1e-6) and std == pytest.approx(0, abs=1e-6)
    same = torch.zeros(50, classes)
    same[:, 2] = 60.0                                              # identical predictions
    assert inception_score(same, splits)[0] == pytest.approx(1.0, abs=1e-9)
    # random logits against a direct numpy computation of exp(E KL(p(y|x) || p(y))) per split
    logits = torch.randn(40, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    p = torch.softmax(logits, 1).numpy()
    per_split = []
    for chunk in np.split(p, 4):
        marginal = chunk.mean(0, keepdims=True)
        per_split.append(np.exp((chunk * (np.log(chunk) - np.log(marginal))).sum(1).mean()))
    assert inception_score(logits, 4) == pytest.approx((np.mean(per_split), np.std(per_split)), rel=1e-9)
    with pytest.raises(ValueError, match='N >= splits'):
        inception_score(torch.randn(3, 4), 10)


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 6))
    mu, sigma = a.mean(0), np.cov(a, rowvar=False)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0, abs=1e-6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    s1, s2 = rng.uniform(0.5, 2, 6), rng.uniform(0.5, 2, 6)
    closed = ((mu1 - mu2) ** 2).sum() + (s1 + s2 - 2 * np.sqrt(s1 * s2)).sum()
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(closed, rel=1e-9)
    # singular covariances (fewer samples than dimensions) stay finite
    b = rng.normal(size=(3, 6))
    assert np.isfinite(frechet_distance(b.mean(0), np.cov(b, rowvar=False), mu, sigma))
    with pytest.raises(ValueError, match='different shapes'):
        frechet_distance(mu, sigma, mu[:3], sigma[:3, :3])


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope='module')
def eval_setup(tmp_path_factory):
    """Synthetic birds (8 train / 110 test), random DAMSM encoders and a random 64 px generator."""
    from helpers import make_synthetic_with_encoders
    root = make_synthetic_with_encoders(tmp_path_factory.mktemp('eval'), 8, 110, seed=5, epoch=1, nef=32,
                                        input_size=75)
    cfg = load_config(None, _overrides(root))
    torch.save(build_networks(cfg)['netG'].state_dict(), root / 'netG_001.pth')
    return root


def _overrides(root, **extra):
    base = {'DATASET_NAME': 'synthetic_birds', 'DATA_DIR': root / 'synthetic_birds', 'TREE.BASE_SIZE': 64,
            'TRAIN.NF': 2, 'TEXT.EMBEDDING_DIM': 32, 'TEXT.IMAGE_ENCODER_INPUT': 75,
            'TEXT.DAMSM_NAME': root / 'enc' / 'text_encoder1.pth', 'DEVICE': 'cpu', 'WORKERS': 0,
            'EVAL.RANDOM_WEIGHTS': True, 'EVAL.FID_DIMS': 64, 'EVAL.BATCH_SIZE': 40, 'EVAL.SPLITS': 2,
            'EVAL.CACHE_DIR': root / 'cache', 'SYNTHETIC.NUM_TRAIN': 8, 'SYNTHETIC.NUM_TEST': 110,
            'SYNTHETIC.IMAGE_SIZE': 128, 'SYNTHETIC.SEED': 5}
    base.update(extra)
    return [f'{k}={v}' for k, v in base.items()]


def _argv(root, *args, **extra):
    return ['--cfg', str(ROOT / 'cfg' / 'bird.yml'), *map(str, args)] + _overrides(root, **extra)


@pytest.mark.slow
def test_is_and_fid_from_a_generator_and_from_its_folder(eval_setup, capsys):
    root = eval_setup
    netg = root / 'netG_001.pth'
    assert eval_main('IS', _argv(root, '--netG', netg, '--num', 100)) == 0
    result = json.loads((root / 'netG_001' / 'is.json').read_text())
    assert result['metric'] == 'IS' and result['count'] == 100 and result['image_size'] == 64
    assert 1.0 <= result['value'] and result['weights']['weights'] == 'random'
    assert 'eval_IS.py' in result['command']
    rp = result['r_precision']                                   # DAMSM files configured: reported
    assert rp['count'] == 100 and 0.0 <= rp['mean'] <= 1.0
    assert 'NOT comparable' in capsys.readouterr().err

    # the same images through a B_VALIDATION=True folder give the same IS
    from miscc.cli import gan_main
    out = root / 'valid'
    assert gan_main(False, _argv(root, 'B_VALIDATION=True', f'TRAIN.NET_G={netg}', 'SAMPLE.NUM=100',
                                 f'SAMPLE.OUT_DIR={out}')) == 0
    assert eval_main('IS', _argv(root, '--images', out)) == 0
    from_folder = json.loads((out / 'is.json').read_text())
    assert from_folder['count'] == 100
    assert from_folder['value'] == pytest.approx(result['value'], rel=1e-6)
    assert from_folder['r_precision']['mean'] == pytest.approx(rp['mean'], abs=1e-9)

    assert eval_main('FID', _argv(root, '--images', out, '--out', root / 'fid.json')) == 0
    fid = json.loads((root / 'fid.json').read_text())
    assert fid['metric'] == 'FID' and fid['count'] == 100 and fid['dims'] == 64
    assert fid['value'] > 0 and fid['reference']['count'] == 110 and 'kid' in fid
    assert eval_main('FID', _argv(root, '--netG', netg, '--num', 100, '--out', root / 'fid2.json')) == 0
    fid2 = json.loads((root / 'fid2.json').read_text())
    assert fid2['reference']['from_cache'] and fid2['value'] == pytest.approx(fid['value'], rel=1e-6)


@pytest.mark.slow
def test_reference_cache_is_reused_and_invalidated(eval_setup, monkeypatch):
    root = eval_setup
    cfg = load_config(None, _overrides(root, **{'EVAL.CACHE_DIR': root / 'cache2'})).freeze()
    extractor, tag = evaluation.inception_extractor(cfg, ['64'], 'cpu')
    calls = []
    real_extract = evaluation.extract

    def counting(*args, **kwargs):
        calls.append(args[3] if len(args) > 3 else kwargs.get('desc'))
        return real_extract(*args, **kwargs)
    monkeypatch.setattr(evaluation, 'extract', counting)
    first = reference_statistics(cfg, extractor, tag, 'cpu', 64)
    again = reference_statistics(cfg, extractor, tag, 'cpu', 64)
    assert len(calls) == 1 and not first['cached'] and again['cached']
    assert np.array_equal(first['mu'], again['mu']) and np.allclose(first['sigma'], again['sigma'])
    reference_statistics(cfg, extractor, tag, 'cpu', 32)                  # other size
    reference_statistics(cfg, extractor, tag, 'cpu', 64, split='train')   # other split
    other = dict(tag, sha256='f' * 64)                                   # other weights
    reference_statistics(cfg, extractor, other, 'cpu', 64)
    assert len(calls) == 4
    # a cache file whose recorded settings disagree with its name is recomputed, not trusted
    path = Path(first['path'])
    with np.load(path) as z:
        stored = {k: z[k] for k in z.files}
    meta = json.loads(str(stored['meta']))
    stored['meta'] = json.dumps(dict(meta, image_size=128))
    np.savez(path, **stored)
    assert not reference_statistics(cfg, extractor, tag, 'cpu', 64)['cached'] and len(calls) == 5


def test_a_crafted_or_corrupt_reference_cache_is_recomputed_never_unpickled(eval_setup, tmp_path):
    from helpers import CodePayload, TinyExtractor
    cfg = load_config(None, _overrides(eval_setup, **{'EVAL.CACHE_DIR': tmp_path / 'cache'})).freeze()
    tag = {'weights': 'tiny', 'sha256': 'ab' * 32}
    first = reference_statistics(cfg, TinyExtractor(), tag, 'cpu', 64)
    path, marker = Path(first['path']), tmp_path / 'ran'
    with np.load(path) as z:
        stored = {k: z[k] for k in z.files}
    crafted = dict(stored, meta=np.array([CodePayload(marker)], dtype=object))
    for content in (crafted, None):
        if content is None:
            path.write_bytes(path.read_bytes()[:200])            # truncated
        else:
            with open(path, 'wb') as f:
                np.savez(f, **content)
        with pytest.warns(UserWarning, match=f"FID reference cache '{path}' could not be read"):
            again = reference_statistics(cfg, TinyExtractor(), tag, 'cpu', 64)
        assert not again['cached'] and np.allclose(again['mu'], first['mu']) and not marker.exists()
        assert reference_statistics(cfg, TinyExtractor(), tag, 'cpu', 64)['cached']   # rewritten whole


def test_bad_inputs_are_named(eval_setup, tmp_path, capsys, monkeypatch):
    root = eval_setup
    folder = tmp_path / 'imgs'
    folder.mkdir()
    Image.new('RGB', (64, 64)).save(folder / 'img_s0.png')
    (folder / 'img_s1.png').write_bytes(b'not a png')
    assert eval_main('IS', _argv(root, '--images', folder)) == 2
    assert 'img_s1.png' in capsys.readouterr().err
    (tmp_path / 'empty').mkdir()
    assert eval_main('IS', _argv(root, '--images', tmp_path / 'empty')) == 2
    assert 'holds no PNG/JPG images' in capsys.readouterr().err
    assert eval_main('FID', _argv(root)) == 2
    assert 'exactly one of --images' in capsys.readouterr().err
    # real weights asked for but absent: the file name and the place to put it
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    assert eval_main('IS', _argv(root, '--images', folder, **{'EVAL.RANDOM_WEIGHTS': False})) == 2
    err = capsys.readouterr().err
    assert 'weights-inception-2015-12-05-6726825d.pth' in err and str(tmp_path / 'torch_home') in err


@pytest.mark.slow
def test_domain_classifier_is_is_reported(eval_setup, tmp_path):
    from torchvision.models import inception_v3
    root = eval_setup
    torch.manual_seed(0)
    net = inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=3)
    torch.save(net.state_dict(), tmp_path / 'classifier.pth')
    folder = tmp_path / 'imgs'
    folder.mkdir()
    for i in range(4):
        Image.fromarray(np.full((64, 64, 3), 60 * i, np.uint8)).save(folder / f'img_s{i}.png')
    argv = _argv(root, '--images', folder, **{'EVAL.CLASSIFIER': tmp_path / 'classifier.pth',
                                              'EVAL.CLASSIFIER_CLASSES': 3})
    assert eval_main('IS', argv) == 0
    result = json.loads((folder / 'is.json').read_text())
    assert 1.0 <= result['domain_classifier']['value'] <= 3.0 + 1e-9
    assert 'r_precision' not in result                 # no manifest: no captions to rank
    # a classifier file of other shape is refused by name
    torch.save(inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=5).state_dict(),
               tmp_path / 'other.pth')
    argv = _argv(root, '--images', folder, **{'EVAL.CLASSIFIER': tmp_path / 'other.pth',
                                              'EVAL.CLASSIFIER_CLASSES': 3})
    assert eval_main('IS', argv) == 2


@pytest.mark.slow
def test_r_precision_on_a_coco_layout_with_five_captions(tmp_path):
    """COCO has 5 captions per image: the R-precision vocabulary must come from the config's
    CAPTIONS_PER_IMAGE (a fixed 10 made it a data error, reported as 'skipped')."""
    from helpers import make_coco_layout
    from miscc.evaluation.scores import caption_r_precision
    from models import CNN_ENCODER, RNN_ENCODER
    keys = make_coco_layout(tmp_path / 'coco', 4, 100)
    cfg = load_config(None, ['DATASET_NAME=coco', f'DATA_DIR={tmp_path / "coco"}', 'TEXT.CAPTIONS_PER_IMAGE=5',
                             'TREE.BASE_SIZE=64', 'TEXT.EMBEDDING_DIM=32', 'TEXT.IMAGE_ENCODER_INPUT=75']).freeze()
    from datasets import build_dataset
    n_words = build_dataset(cfg, 'test', augment=False).n_words
    torch.manual_seed(0)
    torch.save(RNN_ENCODER(n_words, nhidden=32).state_dict(), tmp_path / 'text_encoder1.pth')
    torch.save(CNN_ENCODER(32, input_size=75).state_dict(), tmp_path / 'image_encoder1.pth')
    images = torch.randint(0, 256, (100, 3, 64, 64), dtype=torch.uint8)
    captions = [(tmp_path / 'coco' / 'text' / (k + '.txt')).read_text().splitlines()[0] for k in keys['test']]
    result = caption_r_precision(cfg, str(tmp_path / 'text_encoder1.pth'), images, captions, keys['test'])
    assert result['count'] == 100 and 0.0 <= result['mean'] <= 1.0 and result['std'] >= 0.0


# ----------------------------------------------------------------------------- the papers' protocols
@pytest.mark.slow
def test_stackgan_classifier_protocol_scores_like_cub_inception_score(eval_setup, tmp_path, capsys):
    from miscc.evaluation.cub_inception import cub_inception_score, load_cub_inception
    from models.inception_cub import NUM_LOGITS, CUBInception3
    root = eval_setup
    torch.manual_seed(0)
    torch.save(CUBInception3(NUM_LOGITS).state_dict(), tmp_path / 'cub.pth')
    folder = tmp_path / 'imgs'
    folder.mkdir()
    gen = np.random.default_rng(0)
    images = gen.integers(0, 256, (70, 64, 64, 3), dtype=np.uint8)
    for i, a in enumerate(images):
        Image.fromarray(a).save(folder / f'img_s{i}.png')
    argv = _argv(root, '--images', folder, **{'EVAL.CLASSIFIER': tmp_path / 'cub.pth',
                                              'EVAL.CLASSIFIER_PROTOCOL': 'stackgan'})
    assert eval_main('IS', argv) == 0
    assert 'CUB IS (StackGAN protocol) = ' in capsys.readouterr().out
    got = json.loads((folder / 'is.json').read_text())['domain_classifier']
    assert got['protocol'] == 'stackgan' and got['used'] == 64          # one full batch of 64 of 70
    want = cub_inception_score(load_cub_inception(str(tmp_path / 'cub.pth')),
                               torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), splits=2, seed=0)
    assert got['value'] == pytest.approx(want['mean'], rel=1e-9) and got['std'] == pytest.approx(want['std'], abs=1e-9)


def test_stackgan_protocol_names_the_missing_classifier_and_bad_protocols(eval_setup, tmp_path, capsys,
                                                                         monkeypatch):
    root = eval_setup
    folder = tmp_path / 'imgs'
    folder.mkdir()
    Image.new('RGB', (64, 64)).save(folder / 'img_s0.png')
    monkeypatch.chdir(tmp_path)                     # no models/stackgan_cub_inception.pth here
    assert eval_main('IS', _argv(root, '--images', folder, **{'EVAL.CLASSIFIER_PROTOCOL': 'stackgan'})) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / 'models' / 'stackgan_cub_inception.pth') in err
    assert 'convert_stackgan_inception.py' in err and 'birds_valid299/model.ckpt-5000' in err
    assert eval_main('IS', _argv(root, '--images', folder, **{'EVAL.CLASSIFIER_PROTOCOL': 'stackgan',
                                                              'EVAL.CLASSIFIER': tmp_path / 'x.pth'})) == 2
    assert str(tmp_path / 'x.pth') in capsys.readouterr().err
    assert eval_main('IS', _argv(root, '--images', folder, **{'EVAL.R_PRECISION_PROTOCOL': 'attngan'})) == 2
    assert "EVAL.R_PRECISION_PROTOCOL must be one of 'pairs', 'dmgan'" in capsys.readouterr().err


@pytest.mark.slow
def test_dmgan_r_precision_draws_from_all_test_captions_of_other_classes(eval_setup, monkeypatch):
    from datasets import TextDataset
    from miscc.evaluation.scores import caption_r_precision
    root = eval_setup
    cfg = load_config(None, _overrides(root, **{'EVAL.R_PRECISION_PROTOCOL': 'dmgan'})).freeze()
    test = TextDataset(str(root / 'synthetic_birds'), 'test', image_size=64, dataset_name='synthetic_birds')
    keys = [test.filenames[(7 * n) % 110] for n in range(30)]
    captions = [' '.join(test.ixtoword[w] for w in test.captions[test.filenames.index(k) * 10 + 1]) for k in keys]
    images = torch.randint(0, 256, (30, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    seen = {}
    real = evaluation.r_precision_dmgan

    def spy(image_codes, text_codes, classes, pool_codes, pool_classes, **kw):
        seen.update(classes=list(classes), pool=pool_codes.shape, pool_classes=list(pool_classes), kw=kw)
        return real(image_codes, text_codes, classes, pool_codes, pool_classes, **kw)
    monkeypatch.setattr(evaluation, 'r_precision_dmgan', spy)
    result = caption_r_precision(cfg, str(root / 'enc' / 'text_encoder1.pth'), images, captions, keys)
    assert result['protocol'] == 'dmgan' and result['pool_captions'] == 1100 and 0.0 <= result['mean'] <= 1.0
    assert seen['classes'] == [test.class_id[test.filenames.index(k)] for k in keys]
    assert seen['pool'] == (1100, 32)                                   # every caption of the 110 test images
    assert seen['pool_classes'] == [test.class_id[i // 10] for i in range(1100)]
    assert seen['kw'] == {'splits': 2, 'seed': 0}
    with pytest.raises(DataError, match="e.g. 'not_a_key'"):
        caption_r_precision(cfg, str(root / 'enc' / 'text_encoder1.pth'), images, captions,
                            ['not_a_key'] + keys[1:])


def _folder(path, sizes):
    path.mkdir()
    for i, side in enumerate(sizes):
        Image.new('RGB', (side, side), (40 * i, 100, 50)).save(path / f'img_{i}.png')
    return path


def test_too_few_or_mixed_images_are_one_line_naming_the_folder(eval_setup, tmp_path, capsys):
    root = eval_setup
    one = _folder(tmp_path / 'one', [64])
    assert eval_main('FID', _argv(root, '--images', one)) == 2            # was a sqrtm traceback or a hang
    err = capsys.readouterr().err
    assert f"folder '{one}' gives 1 image(s); FID needs at least 2" in err and 'Traceback' not in err
    three = _folder(tmp_path / 'three', [64] * 3)
    assert eval_main('IS', _argv(root, '--images', three, **{'EVAL.SPLITS': 10})) == 2   # was a ValueError
    err = capsys.readouterr().err
    assert f"folder '{three}' gives 3 image(s); IS needs at least 10" in err and 'EVAL.SPLITS' in err
    # sizes that differ between batches were scored against the last batch's reference
    mixed = _folder(tmp_path / 'mixed', [64, 64, 32, 32])
    for metric in ('IS', 'FID'):
        assert eval_main(metric, _argv(root, '--images', mixed, **{'EVAL.BATCH_SIZE': 2})) == 2
        err = capsys.readouterr().err
        assert "'img_2.png' is 32 x 32 px but 'img_0.png' is 64 x 64 px" in err and str(mixed) in err
        assert '\reval_' not in err and not (mixed / f'{metric.lower()}.json').exists()
    # a file where the result JSON's folder should be: named before any image is read
    (tmp_path / 'afile').write_text('x')
    assert eval_main('IS', _argv(root, '--images', three, '--out', tmp_path / 'afile' / 'is.json')) == 2
    assert f"'{tmp_path / 'afile'}' is a file, not a folder" in capsys.readouterr().err
    # files that are not PNG/JPG are not images of the folder
    (three / 'notes.txt').write_text('not an image')
    assert eval_main('IS', _argv(root, '--images', three)) == 0
    assert json.loads((three / 'is.json').read_text())['count'] == 3
