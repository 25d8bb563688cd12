"""Models: official keys/shapes/parameter counts, initialisation, forward contracts,
and equality with the official formulas written out independently here."""
import json
import pathlib

import pytest
import torch
import torch.nn.functional as F

from miscc.core.config import ConfigError, load_config
from miscc.families import build_networks
from models import CNN_ENCODER, NetD, NetG, RNN_ENCODER
from models.discriminator import discriminator_channels
from models.encoders import INCEPTION_FILENAMES
from models.generator import SSACNBlock, SemanticSpatialBN, generator_channels

FIXTURES = pathlib.Path(__file__).parent / 'fixtures'
OFFICIAL = json.loads((FIXTURES / 'official_state_dict_keys.json').read_text())['models']


def build_official_size_models():
    with torch.device('meta'):  # shapes only: no memory, no initialisation cost
        return {'NetG': NetG(64, 100), 'NetD': NetD(64),
                'RNN_ENCODER': RNN_ENCODER(5450, nhidden=256), 'CNN_ENCODER': CNN_ENCODER(256)}


@pytest.fixture(scope='module')
def official_size_models():
    return build_official_size_models()


@pytest.mark.parametrize('name', ['NetG', 'NetD', 'RNN_ENCODER', 'CNN_ENCODER'])
def test_state_dict_keys_and_shapes_match_official_release(official_size_models, name):
    ours = [(k, list(v.shape)) for k, v in official_size_models[name].state_dict().items()]
    expected = [(k, list(shape)) for k, shape in OFFICIAL[name]]
    assert [k for k, _ in ours] == [k for k, _ in expected]   # same keys, same order
    assert ours == expected


def test_parameter_counts(official_size_models):
    count = {n: sum(p.numel() for p in m.parameters()) for n, m in official_size_models.items()}
    assert count == {'NetG': 29_494_273, 'NetD': 80_379_526, 'RNN_ENCODER': 2_075_320,
                     'CNN_ENCODER': 22_506_720}
    cnn = official_size_models['CNN_ENCODER']
    assert sum(p.numel() for p in cnn.parameters() if p.requires_grad) == 721_152


def test_generator_initialisation():
    torch.manual_seed(0)
    g = NetG(ngf=8, nz=100, img_size=64)
    blocks = g.blocks
    assert len(blocks) == 5
    for block in blocks:
        assert block.gamma.item() == 0.0
        for sscbn in (block.affine0, block.affine2):
            for mlp in (sscbn.fc_gamma, sscbn.fc_beta):
                assert torch.count_nonzero(mlp.linear2.weight) == 0
                assert torch.count_nonzero(mlp.linear2.bias) == 0
                assert torch.count_nonzero(mlp.linear1.weight) > 0
    # A fresh block is its shortcut: identity, or the 1x1 conv where channels change.
    x, sent, mask = torch.randn(2, 64, 8, 8), torch.randn(2, 256), torch.rand(2, 1, 8, 8)
    same = SSACNBlock(64, 64, predict_mask=False)
    assert torch.equal(same(x, sent, mask)[0], x)
    change = SSACNBlock(64, 32)
    out, raw_mask = change(x, sent, mask)
    assert torch.allclose(out, change.c_sc(x)) and raw_mask.shape == (2, 1, 8, 8)


def test_discriminator_initialisation_and_unused_shortcuts():
    d = NetD(ndf=4, img_size=256)
    assert all(b.gamma.item() == 0.0 for b in d.blocks)
    # blocks 4 and 5 keep 16*ndf channels: their 1x1 shortcut is stored but never used
    assert [b.learned_shortcut for b in d.blocks] == [True, True, True, True, False, False]
    x = torch.randn(2, 16 * 4, 8, 8)
    assert torch.equal(d.block4(x), F.avg_pool2d(x, 2))  # gamma = 0: pure pooled shortcut


def test_embedding_and_projection_init_uniform_0_1():
    torch.manual_seed(0)
    rnn = RNN_ENCODER(1000)
    w = rnn.encoder.weight
    assert w.abs().max() <= 0.1 and w.abs().max() > 0.099
    assert abs(w.std().item() - 0.1 / 3 ** 0.5) < 0.002  # std of U(-0.1, 0.1)
    cnn = CNN_ENCODER(256)
    for p in (cnn.emb_features.weight, cnn.emb_cnn_code.weight):
        assert p.abs().max() <= 0.1 and abs(p.std().item() - 0.1 / 3 ** 0.5) < 0.003


@pytest.mark.parametrize('size, blocks', [(64, 5), (128, 6), (256, 7)])
def test_generator_output_and_masks(size, blocks):
    torch.manual_seed(0)
    g = NetG(ngf=4, nz=100, img_size=size)
    img, masks = g(torch.randn(3, 100), torch.randn(3, 256))
    assert img.shape == (3, 3, size, size)
    assert img.min() >= -1 and img.max() <= 1
    assert [m.shape for m in masks] == [(3, 1, 4 * 2 ** i, 4 * 2 ** i) for i in range(blocks)]
    assert all(m.min() >= 0 and m.max() <= 1 for m in masks)
    assert generator_channels(size)[-3:] == [4, 2, 1] and len(generator_channels(size)) == blocks


def test_generator_rejects_unsupported_size():
    with pytest.raises(ValueError, match='power of two'):
        NetG(ngf=4, img_size=100)


@pytest.mark.parametrize('size', [32, 64, 128, 256])
def test_discriminator_shapes(size):
    d = NetD(ndf=4, img_size=size)
    feats = d(torch.randn(2, 3, size, size))
    assert feats.shape == (2, 64, 4, 4)
    assert d.COND_DNET(feats, torch.randn(2, 256)).shape == (2, 1, 1, 1)


def test_discriminator_channels_32px_drops_the_first_block_of_64px():
    assert discriminator_channels(64) == [2, 4, 8, 16]
    assert discriminator_channels(128) == [2, 4, 8, 16, 16]
    assert discriminator_channels(256) == [2, 4, 8, 16, 16, 16]
    assert discriminator_channels(32) == [4, 8, 16]
    d = NetD(ndf=4, img_size=32)
    assert [(b.conv_r[0].in_channels, b.conv_r[0].out_channels) for b in d.blocks] == [(4, 16), (16, 32), (32, 64)]


def test_32px_generator_and_discriminator_train_together():
    torch.manual_seed(0)
    g, d = NetG(ngf=4, nz=100, img_size=32), NetD(ndf=4, img_size=32)
    sent = torch.randn(3, 256)
    img, masks = g(torch.randn(3, 100), sent)
    assert img.shape == (3, 3, 32, 32) and [m.shape[-1] for m in masks] == [4, 8, 16, 32]
    feats = d(img)
    assert feats.shape == (3, 16 * 4, 4, 4)
    d.COND_DNET(feats, sent).mean().backward()
    assert g.fc.weight.grad.abs().sum() > 0


def test_gate_init_sets_every_residual_gate():
    g = NetG(ngf=4, nz=100, img_size=64, gate_init=0.25)
    d = NetD(ndf=4, img_size=64, gate_init=0.5)
    assert [b.gamma.item() for b in g.blocks] == [0.25] * 5
    assert [b.gamma.item() for b in d.blocks] == [0.5] * 4
    assert all(b.gamma.requires_grad for b in g.blocks + d.blocks)
    # the same keys and shapes as with the official zero gates
    assert {k: v.shape for k, v in g.state_dict().items()} == {k: v.shape for k, v in NetG(4, 100, 64).state_dict().items()}
    # an open gate lets the residual (and with it the sentence) change a fresh block's output
    x, mask = torch.randn(2, 16, 8, 8), torch.ones(2, 1, 8, 8)
    block = SSACNBlock(16, 16, predict_mask=False, gate_init=1.0)
    assert not torch.equal(block(x, torch.randn(2, 256), mask)[0], x)


def test_gate_init_keys_reach_the_networks():
    nets = build_networks(load_config(None, ['TRAIN.NF=2']))
    assert all(b.gamma.item() == 0.0 for b in nets['netG'].blocks + nets['netD'].blocks)   # official
    nets = build_networks(load_config(None, ['TRAIN.NF=2', 'GAN.GATE_INIT=0.1', 'GAN.D_GATE_INIT=1.0']))
    assert all(b.gamma.item() == pytest.approx(0.1) for b in nets['netG'].blocks)
    assert all(b.gamma.item() == 1.0 for b in nets['netD'].blocks)


def test_sscbn_formula():
    torch.manual_seed(0)
    layer = SemanticSpatialBN(6)
    for mlp in (layer.fc_gamma, layer.fc_beta):
        torch.nn.init.normal_(mlp.linear2.weight)
        torch.nn.init.normal_(mlp.linear2.bias)
    x, e, m = torch.randn(4, 6, 5, 5), torch.randn(4, 256), torch.rand(4, 1, 5, 5)
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    x_hat = (x - mean) / torch.sqrt(var + 1e-5)
    gamma = torch.relu(e @ layer.fc_gamma.linear1.weight.T + layer.fc_gamma.linear1.bias)
    gamma = gamma @ layer.fc_gamma.linear2.weight.T + layer.fc_gamma.linear2.bias
    beta = torch.relu(e @ layer.fc_beta.linear1.weight.T + layer.fc_beta.linear1.bias)
    beta = beta @ layer.fc_beta.linear2.weight.T + layer.fc_beta.linear2.bias
    expected = (gamma[:, :, None, None] * m + 1) * x_hat + beta[:, :, None, None] * m
    assert torch.allclose(layer(x, e, m), expected, atol=1e-5)


def reference_generator_forward(g, noise, sent):
    """The official NetG forward, written out from the paper/FACTS with functional ops."""
    def bn(x, module):  # training-mode batch norm, optional affine
        return F.batch_norm(x, None, None, module.weight, module.bias, True, 0.0, module.eps)

    def mlp(seq, e):
        return F.linear(F.relu(F.linear(e, seq.linear1.weight, seq.linear1.bias)),
                        seq.linear2.weight, seq.linear2.bias)

    def sscbn(layer, x, e, m):
        w, b = mlp(layer.fc_gamma, e), mlp(layer.fc_beta, e)
        w = w.unsqueeze(-1).unsqueeze(-1).expand(x.size())
        b = b.unsqueeze(-1).unsqueeze(-1).expand(x.size())
        return (w * m + 1) * bn(x, layer.batch_norm2d) + b * m

    def predict(seq, x):
        return seq[3](F.relu(bn(seq[0](x), seq[1])))

    x = F.linear(noise, g.fc.weight, g.fc.bias).view(noise.size(0), -1, 4, 4)
    stage = predict(g.conv_mask, x)
    masks = []
    for i in range(g.num_blocks):
        blk = getattr(g, f'block{i}')
        if i:
            x = F.interpolate(x, scale_factor=2)
            stage = F.interpolate(stage, size=x.shape[2:], mode='bilinear', align_corners=True)
        m = torch.sigmoid(stage)
        masks.append(m)
        h = blk.c2(F.relu(sscbn(blk.affine2, blk.c1(F.relu(sscbn(blk.affine0, x, sent, m))), sent, m)))
        x = (blk.c_sc(x) if blk.learnable_sc else x) + blk.gamma * h
        if blk.predict_mask:
            stage = predict(blk.conv_mask, x)
    x = F.conv2d(F.leaky_relu(bn(x, g.conv_img[0]), 0.2), g.conv_img[2].weight, g.conv_img[2].bias, padding=1)
    return torch.tanh(x), masks


@pytest.mark.slow
def test_generator_equals_reference_formulas_with_random_weights():
    torch.manual_seed(1)
    g = NetG(ngf=4, nz=100, img_size=64)
    with torch.no_grad():  # leave the zero-initialised start so every path contributes
        for p in g.parameters():
            p.normal_(0, 0.1)
    noise, sent = torch.randn(3, 100), torch.randn(3, 256)
    img, masks = g(noise, sent)
    ref_img, ref_masks = reference_generator_forward(g, noise, sent)
    assert torch.allclose(img, ref_img, atol=1e-5)
    for m, r in zip(masks, ref_masks):
        assert torch.allclose(m, r, atol=1e-5)


def test_discriminator_equals_reference_formulas_with_random_weights():
    torch.manual_seed(2)
    d = NetD(ndf=2, img_size=64)
    with torch.no_grad():
        for p in d.parameters():
            p.normal_(0, 0.1)
    x, s = torch.randn(2, 3, 64, 64), torch.randn(2, 256)
    h = F.conv2d(x, d.conv_img.weight, d.conv_img.bias, padding=1)
    for blk in d.blocks:
        r = F.leaky_relu(F.conv2d(h, blk.conv_r[0].weight, stride=2, padding=1), 0.2)
        r = F.leaky_relu(F.conv2d(r, blk.conv_r[2].weight, padding=1), 0.2)
        sc = F.conv2d(h, blk.conv_s.weight, blk.conv_s.bias) if h.size(1) != r.size(1) else h
        h = F.avg_pool2d(sc, 2) + blk.gamma * r
    feats = d(x)
    assert torch.allclose(feats, h, atol=1e-5)
    joint = torch.cat([h, s.view(2, 256, 1, 1).repeat(1, 1, 4, 4)], 1)
    j = d.COND_DNET.joint_conv
    logits = F.conv2d(F.leaky_relu(F.conv2d(joint, j[0].weight, padding=1), 0.2), j[2].weight)
    assert torch.allclose(d.COND_DNET(feats, s), logits, atol=1e-5)


def test_rnn_encoder_contract():
    torch.manual_seed(0)
    rnn = RNN_ENCODER(50).eval()
    lens = torch.tensor([7, 5, 5, 2])
    caps = torch.randint(1, 50, (4, 18))
    caps[torch.arange(18)[None, :] >= lens[:, None]] = 0
    words, sent = rnn(caps, lens, rnn.init_hidden(4))
    assert words.shape == (4, 256, 7) and sent.shape == (4, 256)
    # The sentence vector is the final state of each direction: forward at the last
    # real word, backward at the first word.
    for i, n in enumerate(lens.tolist()):
        assert torch.allclose(sent[i, :128], words[i, :128, n - 1], atol=1e-6)
        assert torch.allclose(sent[i, 128:], words[i, 128:, 0], atol=1e-6)
        assert torch.count_nonzero(words[i, :, n:]) == 0  # padding positions are zero
    # Order of the batch does not matter.
    perm = torch.tensor([2, 0, 3, 1])
    w2, s2 = rnn(caps[perm], lens[perm])
    assert torch.allclose(s2, sent[perm], atol=1e-6)
    assert torch.allclose(w2, words[perm], atol=1e-6)
    hidden = rnn.init_hidden(3)
    assert [tuple(h.shape) for h in hidden] == [(2, 3, 128), (2, 3, 128)]
    gru = RNN_ENCODER(50, rnn_type='GRU')
    assert gru.init_hidden(3).shape == (2, 3, 128)
    with pytest.raises(ValueError, match='RNN_TYPE'):
        RNN_ENCODER(50, rnn_type='TRANSFORMER')


@pytest.mark.slow
def test_cnn_encoder_contract_any_input_size():
    torch.manual_seed(0)
    cnn = CNN_ENCODER(256).eval()
    for size in (64, 256):
        regions, code = cnn(torch.rand(2, 3, size, size) * 2 - 1)
        assert regions.shape == (2, 256, 17, 17) and code.shape == (2, 256)
    trainable = {n.split('.')[0] for n, p in cnn.named_parameters() if p.requires_grad}
    assert trainable == {'emb_features', 'emb_cnn_code'}


@pytest.mark.slow
def test_cnn_encoder_smaller_input_size_same_weights():
    torch.manual_seed(0)
    cnn = CNN_ENCODER(32).eval()
    small = CNN_ENCODER(32, input_size=128).eval()
    small.load_state_dict(cnn.state_dict(), strict=True)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        regions, code = small(x)
        # the same network on the image resized to 128 by hand
        ref_regions, ref_code = cnn.forward.__func__(small, F.interpolate(x, size=(128, 128), mode='bilinear'))
    assert regions.shape == (2, 32, 6, 6) and code.shape == (2, 32)
    assert torch.equal(regions, ref_regions) and torch.equal(code, ref_code)
    with pytest.raises(ValueError, match='at least 75'):
        CNN_ENCODER(32, input_size=64)


def test_cnn_encoder_never_downloads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError('attempted a download')
    monkeypatch.setattr(torch.hub, 'load_state_dict_from_url', refuse)
    monkeypatch.setattr(torch.hub, 'download_url_to_file', refuse)
    CNN_ENCODER(16)


def test_imagenet_weights_missing_names_file_and_place(monkeypatch, tmp_path):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    with pytest.raises(FileNotFoundError) as e:
        CNN_ENCODER(16, inception_weights='hub')
    msg = str(e.value)
    assert INCEPTION_FILENAMES[0] in msg and str(tmp_path / 'hub' / 'checkpoints') in msg
    with pytest.raises(FileNotFoundError, match='nowhere.pth'):
        CNN_ENCODER(16, inception_weights=str(tmp_path / 'nowhere.pth'))


def test_imagenet_weights_load_from_hub_cache_and_path(monkeypatch, tmp_path):
    from torchvision.models import inception_v3
    torch.manual_seed(3)
    reference = inception_v3(weights=None, aux_logits=True, init_weights=False)
    hub = tmp_path / 'hub' / 'checkpoints'
    hub.mkdir(parents=True)
    torch.save(reference.state_dict(), hub / INCEPTION_FILENAMES[0])
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    for weights in ('hub', str(hub / INCEPTION_FILENAMES[0])):
        cnn = CNN_ENCODER(16, inception_weights=weights)
        assert torch.equal(cnn.Mixed_7c.branch_pool.conv.weight, reference.Mixed_7c.branch_pool.conv.weight)
        assert torch.equal(cnn.Conv2d_1a_3x3.bn.running_var, reference.Conv2d_1a_3x3.bn.running_var)


def reference_generator_forward_without_masks(g, noise, sent):
    """SSCBN reduced to sentence-conditioned BN, written out: (gamma(e) + 1) * BN(x) + beta(e)
    in every block, no mask anywhere."""
    def bn(x, module):
        return F.batch_norm(x, None, None, module.weight, module.bias, True, 0.0, module.eps)

    def mlp(seq, e):
        return F.linear(F.relu(F.linear(e, seq.linear1.weight, seq.linear1.bias)), seq.linear2.weight, seq.linear2.bias)

    def cbn(layer, x, e):
        return (mlp(layer.fc_gamma, e)[:, :, None, None] + 1) * bn(x, layer.batch_norm2d) + mlp(layer.fc_beta, e)[:, :, None, None]

    x = F.linear(noise, g.fc.weight, g.fc.bias).view(noise.size(0), -1, 4, 4)
    for i in range(g.num_blocks):
        blk = getattr(g, f'block{i}')
        if i:
            x = F.interpolate(x, scale_factor=2)
        h = blk.c2(F.relu(cbn(blk.affine2, blk.c1(F.relu(cbn(blk.affine0, x, sent))), sent)))
        x = (blk.c_sc(x) if blk.learnable_sc else x) + blk.gamma * h
    x = F.conv2d(F.leaky_relu(bn(x, g.conv_img[0]), 0.2), g.conv_img[2].weight, g.conv_img[2].bias, padding=1)
    return torch.tanh(x)


def test_masks_ones_has_no_mask_predictor_and_is_sentence_conditioned_bn():
    torch.manual_seed(3)
    g = NetG(ngf=4, nz=100, img_size=64, masks='ones')
    predicted = NetG(ngf=4, nz=100, img_size=64)
    extra = set(predicted.state_dict()) - set(g.state_dict())
    # exactly the mask predictors are gone (no unused parameters: nothing for DDP to wait for)
    assert extra and all('conv_mask' in k for k in extra) and set(g.state_dict()) < set(predicted.state_dict())
    assert not any('conv_mask' in name for name, _ in g.named_modules())
    with torch.no_grad():
        for p in g.parameters():
            p.normal_(0, 0.1)
    noise, sent = torch.randn(3, 100), torch.randn(3, 256)
    img, masks = g(noise, sent)
    assert torch.allclose(img, reference_generator_forward_without_masks(g, noise, sent), atol=1e-5)
    assert [m.shape[-1] for m in masks] == [4, 8, 16, 32, 64] and all(bool((m == 1).all()) for m in masks)
    img.mean().backward()
    assert all(p.grad is not None for p in g.parameters())   # every parameter is used
    with pytest.raises(ValueError, match="masks must be one of 'predicted', 'ones'"):
        NetG(ngf=4, img_size=64, masks='zeros')


def test_gan_masks_key_reaches_the_generator():
    assert build_networks(load_config(None, ['TRAIN.NF=2']))['netG'].masks == 'predicted'
    assert build_networks(load_config(None, ['TRAIN.NF=2', 'GAN.MASKS=ones']))['netG'].masks == 'ones'
    with pytest.raises(ConfigError, match='GAN.MASKS'):
        build_networks(load_config(None, ['TRAIN.NF=2', 'GAN.MASKS=off']))
