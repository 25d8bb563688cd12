"""The explorer (miscc/explorer.py): its page functions as plain Python on tiny trained runs
(SSA-GAN with masks beside DF-GAN without), and the real page in headless Chromium: typing a
caption, generating, the same pixels for the same seed, errors shown in the page while the
server keeps serving, and no request leaving this machine."""
import base64
import io
import json
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from helpers import make_synthetic_with_encoders
from miscc import explorer as ex
from miscc.cli import gan_main
from miscc.core.checkpoint import CheckpointError
from miscc.evaluation.generation import to_uint8_image

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _argv(root, out, model, **extra):
    base = {'DATASET_NAME': 'synthetic_birds', 'DATA_DIR': root / 'synthetic_birds', 'OUTPUT_DIR': root / out,
            'TEXT.DAMSM_NAME': root / 'enc' / 'text_encoder5.pth', 'TREE.BASE_SIZE': 32, 'TRAIN.NF': 2,
            'TRAIN.BATCH_SIZE': 4, 'TRAIN.MAX_EPOCH': 1, 'TRAIN.WARMUP_EPOCHS': 0, 'TRAIN.GSAVE_INTERVAL': 1,
            'TRAIN.DSAVE_INTERVAL': 1, 'WORKERS': 0, 'DEVICE': 'cpu', 'MODEL.NAME': model,
            'TEXT.IMAGE_ENCODER_INPUT': 96, 'TRAIN.LAMBDA_DA': 0.0, 'GAN.GATE_INIT': 1.0,
            'SYNTHETIC.NUM_TRAIN': 8, 'SYNTHETIC.NUM_TEST': 4, 'SYNTHETIC.IMAGE_SIZE': 128, 'SYNTHETIC.SEED': 3}
    base.update(extra)
    return ['--cfg', str(ROOT / 'cfg' / 'bird.yml')] + [f'{k}={v}' for k, v in base.items()]


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """One epoch of SSA-GAN and one of DF-GAN at 32 px on 8 synthetic birds: {name: run folder}."""
    root = make_synthetic_with_encoders(tmp_path_factory.mktemp('explore'), 8, 4, seed=3, epoch=5, input_size=96)
    folders = {}
    for model in ('ssagan', 'dfgan'):
        assert gan_main(False, _argv(root, f'out_{model}', model)) == 0
        (folders[model],) = (root / f'out_{model}').iterdir()
    folders['root'] = root
    return folders


@pytest.fixture(scope='module')
def explorer(runs):
    return ex.Explorer([ex.load_model(str(runs[name]), device='cpu') for name in ('ssagan', 'dfgan')])


# ----------------------------------------------------------------------------- the page's functions
def test_sources_load_with_their_runs_config(runs, explorer):
    ssa, df = explorer.models
    assert ssa.name == 'ssagan: netG_001.pth' and df.name == 'dfgan: netG_001.pth'
    assert ssa.stack.cfg.TREE.BASE_SIZE == 32 and ssa.stack.cfg.TRAIN.NF == 2       # from the run's state
    # a generator file inside a run folder takes that run's config too
    same = ex.load_model(str(runs['ssagan'] / 'models' / 'netG_001.pth'), device='cpu')
    assert same.stack.netg_path == ssa.stack.netg_path


def test_generate_draws_every_model_side_by_side_with_ssagan_masks(explorer):
    images, masks, notes = explorer.generate('a red bird with blue wings', 3, seed=7)
    # two columns (32 px images shown at TILE px), each under its name and as wide as it
    assert images.shape[0] == ex.LABEL_HEIGHT + 3 * ex.TILE and images.shape[1] >= 2 * ex.TILE + 6
    ssa = explorer.models[0]
    stages = len(ssa.stack.generate(torch.zeros(1, 100), torch.zeros(1, 256))[1])
    assert stages == 4                                          # 4, 8, 16, 32 px
    assert masks.shape[0] == ex.LABEL_HEIGHT + 3 * ex.TILE and masks.shape[1] >= stages * ex.TILE   # DF-GAN has none
    assert (masks[ex.LABEL_HEIGHT:, stages * ex.TILE:] == 255).all()    # four heat maps a row, then white
    assert notes == []
    # the first tile is the generator's image for the noise of (seed 7, image 0), enlarged
    sent, _ = explorer.sentences(ssa, 'a red bird with blue wings')
    own, _ = ssa.stack.generate(ssa.stack.noise(range(3), 7), sent.expand(3, -1))
    first = to_uint8_image(own)[0].permute(1, 2, 0).numpy()
    expected = np.asarray(Image.fromarray(first).resize((ex.TILE, ex.TILE), Image.NEAREST))
    assert np.array_equal(images[ex.LABEL_HEIGHT:ex.LABEL_HEIGHT + ex.TILE, :ex.TILE], expected)
    # the same seed, the same pixels; another seed, others
    again, again_masks, _ = explorer.generate('a red bird with blue wings', 3, seed=7)
    assert np.array_equal(again, images) and np.array_equal(again_masks, masks)
    other, _, _ = explorer.generate('a red bird with blue wings', 3, seed=8)
    assert not np.array_equal(other, images)


def test_heat_map_colours():
    hm = ex.heat_map(np.array([[0.0, 0.5, 1.0]]))
    assert hm[0].tolist() == [[0, 0, 115], [255, 0, 57], [255, 255, 0]]


def test_captions_messages_and_errors(explorer):
    _, _, notes = explorer.generate('a red zebra bird', 1, 0)
    assert len(notes) == 2 and all('unknown words dropped: zebra' in n for n in notes)   # each model names it
    long = ' '.join(['red bird'] * 12)                                        # 24 known words > 18
    _, _, notes = explorer.generate(long, 1, 0)
    assert any('more than 18 known words; truncated to the first 18' in n for n in notes)
    with pytest.raises(ex.ExplorerError, match='type a caption first'):
        explorer.generate('   ', 2, 0)
    with pytest.raises(ex.ExplorerError, match='no word of "zebra giraffe" is in its vocabulary'):
        explorer.generate('zebra giraffe', 2, 0)
    with pytest.raises(ex.ExplorerError, match='the number of images must be 1 to 16, got 0'):
        explorer.generate('a red bird', 0, 0)


def test_interpolation_ends_are_the_two_captions(explorer):
    a, b = 'a red bird with blue wings', 'a yellow bird with a black crown'
    start, _ = explorer.interpolate(a, b, 0.0, 2, 5)
    end, _ = explorer.interpolate(a, b, 1.0, 2, 5)
    middle, _ = explorer.interpolate(a, b, 0.5, 2, 5)
    assert np.array_equal(start, explorer.generate(a, 2, 5)[0])
    assert np.array_equal(end, explorer.generate(b, 2, 5)[0])
    assert not np.array_equal(start, end)      # the text reaches the images (GAN.GATE_INIT 1)
    assert not np.array_equal(middle, start) and not np.array_equal(middle, end)
    with pytest.raises(ex.ExplorerError, match=r'weight must be in \[0, 1\]'):
        explorer.interpolate(a, b, 1.5, 2, 5)


def test_nearest_training_bird_has_the_captions_attributes(explorer):
    train = explorer._training_birds(explorer.models[0].stack.cfg)
    bird = train.attributes[5]
    caption = f"a {bird['size']} bird with a {bird['body']} belly, {bird['wing']} wings and a {bird['head']} crown"
    image, line = explorer.nearest_training_bird(caption)
    index = next(i for i, a in enumerate(train.attributes)              # the first bird with all four
                 if all(a[k] == bird[k] for k in ('size', 'body', 'wing', 'head')))
    expected = np.asarray(train.dataset.source_image(index).resize((2 * ex.TILE, 2 * ex.TILE), Image.BICUBIC))
    assert np.array_equal(image, expected)
    assert line.startswith(f"body {bird['body']}, wing {bird['wing']}, head {bird['head']}, beak ")
    assert '(4 of the 4 attributes the caption names: ' in line
    assert explorer.nearest_training_bird('a bird') is None               # names no attribute


def test_saved_grid_is_the_last_one(explorer, tmp_path):
    images, _, _ = explorer.generate('a green bird', 2, 3)
    path = explorer.save_grid(str(tmp_path))
    assert np.array_equal(np.asarray(Image.open(path)), images)


def test_enlarged_images_keep_their_size(runs):
    model = ex.load_model(str(runs['ssagan']), overrides=['SAMPLE.UPSCALE=4'], device='cpu')
    images, _, _ = ex.Explorer([model]).generate('a red bird', 1, 0)
    assert images.shape[0] == ex.LABEL_HEIGHT + 128                     # 32 px x 4, above TILE
    assert (images[ex.LABEL_HEIGHT:, 128:] == 255).all()


def test_bad_generators_are_one_line_and_the_page_goes_on(runs, explorer, tmp_path):
    page_error = ex._shown(explorer.add)
    # a DF-GAN generator with the SSA-GAN run's config: another family
    wrong = tmp_path / 'wrong' / 'models'
    wrong.mkdir(parents=True)
    shutil.copy(runs['ssagan'] / 'models' / 'state_last.pth', wrong / 'state_last.pth')
    shutil.copy(runs['dfgan'] / 'models' / 'netG_001.pth', wrong / 'netG_001.pth')
    with pytest.raises(CheckpointError, match="does not match NetG"):
        explorer.add(str(wrong.parent))
    with pytest.raises(Exception) as caught:                  # in the page: gr.Error with that line
        page_error(str(wrong.parent), '')
    assert type(caught.value).__name__ == 'Error' and 'does not match NetG' in str(caught.value)
    # a missing text encoder
    with pytest.raises(FileNotFoundError, match='text_encoder404.pth'):
        explorer.add(str(runs['ssagan']), '', [f"TEXT.DAMSM_NAME={tmp_path / 'text_encoder404.pth'}"])
    with pytest.raises(ex.ExplorerError, match="is not inside a run folder: give its config with --cfg"):
        explorer.add(str(shutil.copy(runs['ssagan'] / 'models' / 'netG_001.pth', tmp_path / 'G.pth')))
    assert len(explorer.models) == 2                          # nothing half-added
    line = explorer.add(str(runs['ssagan'] / 'models' / 'netG_001.pth'))
    assert line.startswith('added ssagan: netG_001.pth') and len(explorer.models) == 3
    explorer.models.pop()


def test_command_line_errors_are_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)                                # no output/demo here
    assert ex.main([]) == 2
    assert capsys.readouterr().err == ("explore.py: error: no demo output in 'output/demo': run the demo first "
                                       "(python main.py --cfg cfg/demo.yml), or name a run folder or a generator file\n")
    assert ex.main([str(tmp_path / 'nothing')]) == 2
    err = capsys.readouterr().err
    assert err == (f"explore.py: error: '{tmp_path / 'nothing'}' not found: give a run folder, a generator file "
                   f"or the demo's output folder\n")


# ----------------------------------------------------------------------------- the real page in a browser
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _browser():
    if not (shutil.which('chromium') and shutil.which('chromedriver')):
        if os.environ.get('CI'):
            pytest.fail('chromium and chromium-driver must be installed in CI (.ci/run installs them)')
        pytest.skip('chromium / chromedriver not installed (apt-get install chromium chromium-driver)')
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which('chromium')
    for flag in ('--headless=new', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                 '--disable-background-networking', '--disable-component-update', '--disable-sync',
                 '--window-size=1400,1100'):
        options.add_argument(flag)
    options.set_capability('goog:loggingPrefs', {'performance': 'ALL'})
    return webdriver.Chrome(service=Service(shutil.which('chromedriver')), options=options)


def _request_done(driver, n: int) -> None:
    """Wait until the page reports its ``n``-th generation request."""
    WebDriverWait(driver, 60).until(lambda d: f'request {n}:' in d.find_element(By.ID, 'notes').text)


def _image_pixels(driver, elem_id: str) -> tuple:
    """(src, pixels) of the image shown in the component ``elem_id``."""
    img = WebDriverWait(driver, 60).until(
        lambda d: next((e for e in d.find_elements(By.CSS_SELECTOR, f'#{elem_id} img')
                        if e.get_attribute('src')), None))
    src = img.get_attribute('src')
    data = driver.execute_async_script(
        "const done = arguments[1]; fetch(arguments[0]).then(r => r.arrayBuffer()).then(b => {"
        " let s = ''; new Uint8Array(b).forEach(c => s += String.fromCharCode(c)); done(btoa(s)); });", src)
    return src, np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert('RGB'))


def test_the_page_in_a_real_browser(explorer):
    port = _free_port()
    page = ex.build_page(explorer)
    ex.launch(page, '127.0.0.1', port, block=False)
    driver = _browser()
    try:
        driver.set_script_timeout(30)
        driver.get(f'http://127.0.0.1:{port}/')
        box = WebDriverWait(driver, 60).until(lambda d: d.find_element(By.CSS_SELECTOR, '#caption textarea'))
        box.send_keys('a small bird with a red belly and blue wings')
        driver.find_element(By.ID, 'generate').click()
        _request_done(driver, 1)
        src, first = _image_pixels(driver, 'images')
        _, masks = _image_pixels(driver, 'masks')
        assert first.shape[0] == masks.shape[0] == ex.LABEL_HEIGHT + 8 * ex.TILE      # 8 images, their masks
        expected, _, _ = explorer.generate('a small bird with a red belly and blue wings', 8, 0)
        assert np.array_equal(first, expected)
        driver.find_element(By.ID, 'generate').click()               # the same seed: the same pixels
        _request_done(driver, 2)
        _, second = _image_pixels(driver, 'images')
        assert np.array_equal(first, second)
        # bad input: a message in the page, and the server goes on serving
        box.send_keys(Keys.CONTROL, 'a')
        box.send_keys(Keys.DELETE)
        driver.find_element(By.ID, 'generate').click()
        WebDriverWait(driver, 30).until(lambda d: 'type a caption first' in d.find_element(By.TAG_NAME, 'body').text)
        box.send_keys('zebra giraffe')
        driver.find_element(By.ID, 'generate').click()
        WebDriverWait(driver, 30).until(lambda d: 'is in its vocabulary' in d.find_element(By.TAG_NAME, 'body').text)
        box.send_keys(Keys.CONTROL, 'a')
        box.send_keys('a green bird')
        driver.find_element(By.ID, 'new-noise').click()
        _request_done(driver, 3)
        _, third = _image_pixels(driver, 'images')
        assert third.shape == first.shape and not np.array_equal(third, first)
        # nothing was asked of any host but this one
        urls = [json.loads(e['message'])['message'].get('params', {}).get('request', {}).get('url', '')
                for e in driver.get_log('performance')]
        requested = {u.split('/')[2] for u in urls if u.startswith(('http://', 'https://', 'ws://', 'wss://'))}
        assert requested == {f'127.0.0.1:{port}'}
    except Exception:
        driver.save_screenshot('/tmp/fail.png')
        raise
    finally:
        driver.quit()
        page.close()
