"""StackGAN's CUB Inception in PyTorch: the TF variable names, the conversion, and (with
TensorFlow installed) the logits against the TF graph built from the same checkpoint."""
import importlib.util
import os
import sys

import numpy as np
import pytest
import torch
from torchvision.models import inception_v3
from torchvision.models.inception import BasicConv2d

from miscc.core.checkpoint import CheckpointError
from miscc.evaluation.cub_inception import CONVERT_REQUIREMENTS, convert_tf_checkpoint, cub_logits, load_cub_inception, \
    protocol_inputs
from models.inception_cub import MOVING_AVERAGE_SUFFIX, NUM_LOGITS, CUBInception3, state_dict_from_tf, \
    tf_variable_names, tf_variable_scopes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, 'tools', 'convert_stackgan_inception.py')


def _tf_arrays_of(state: dict, suffix: str = MOVING_AVERAGE_SUFFIX) -> dict:
    """The TF checkpoint arrays (kh x kw x in x out kernels ...) that convert to ``state``."""
    arrays = {}
    for module, scope in tf_variable_scopes().items():
        arrays[f'{scope}/weights{suffix}'] = state[f'{module}.conv.weight'].permute(2, 3, 1, 0).numpy()
        for tf_name, key in (('beta', 'bias'), ('moving_mean', 'running_mean'), ('moving_variance', 'running_var')):
            arrays[f'{scope}/BatchNorm/{tf_name}{suffix}'] = state[f'{module}.bn.{key}'].numpy()
    arrays[f'logits/logits/weights{suffix}'] = state['fc.weight'].t().numpy()
    arrays[f'logits/logits/biases{suffix}'] = state['fc.bias'].numpy()
    return arrays


def _random_state(seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    with torch.device('meta'):
        shapes = CUBInception3().state_dict()
    state = {}
    for k, v in shapes.items():
        if k.endswith('running_var'):
            state[k] = torch.rand(v.shape, generator=gen) + 0.5
        elif k.endswith('bn.weight'):
            state[k] = torch.ones(v.shape)
        elif k.endswith('num_batches_tracked'):
            state[k] = torch.zeros((), dtype=torch.long)
        else:
            state[k] = torch.randn(v.shape, generator=gen) * 0.1
    return state


# ----------------------------------------------------------------------------- names and shapes
def test_scopes_cover_every_convolution_once_with_slim_names():
    model = CUBInception3()
    convs = {n for n, m in model.named_modules() if isinstance(m, BasicConv2d)}
    scopes = tf_variable_scopes()
    assert set(scopes) == convs and len(convs) == 94
    assert len(set(scopes.values())) == 94
    # read off tensorflow/models inception/slim/inception_model.py: per branch scope the convs
    # are Conv, Conv_1, ... in creation order
    assert scopes['Conv2d_1a_3x3'] == 'conv0' and scopes['Conv2d_4a_3x3'] == 'conv4'
    assert scopes['Mixed_5b.branch5x5_2'] == 'mixed_35x35x256a/branch5x5/Conv_1'
    assert scopes['Mixed_5d.branch_pool'] == 'mixed_35x35x288b/branch_pool/Conv'
    assert scopes['Mixed_6e.branch7x7dbl_5'] == 'mixed_17x17x768e/branch7x7dbl/Conv_4'
    assert scopes['Mixed_7a.branch7x7x3_4'] == 'mixed_17x17x1280a/branch7x7x3/Conv_3'
    assert scopes['Mixed_7b.branch3x3_2b'] == 'mixed_8x8x2048a/branch3x3/Conv_2'
    assert scopes['Mixed_7c.branch3x3dbl_3a'] == 'mixed_8x8x2048b/branch3x3dbl/Conv_2'
    assert len(tf_variable_names()) == 94 * 4 + 2


def test_conversion_transposes_reads_moving_averages_and_sets_unit_scale():
    state = _random_state()
    arrays = _tf_arrays_of(state)
    arrays.update({k[:-len(MOVING_AVERAGE_SUFFIX)]: np.zeros_like(v) for k, v in list(arrays.items())})  # raw copies
    converted = state_dict_from_tf(arrays.__getitem__)
    assert set(converted) == set(state)
    for k, v in state.items():
        expect = torch.ones_like(v) if k.endswith('bn.weight') else v
        assert torch.equal(converted[k], expect), k
    raw = state_dict_from_tf(arrays.__getitem__, moving_average=False)
    assert float(raw['Conv2d_1a_3x3.conv.weight'].abs().max()) == 0.0
    # a square kernel transposed the wrong way would keep its shape: check one element
    w_tf = arrays['conv0/weights' + MOVING_AVERAGE_SUFFIX]                   # 3 x 3 x 3 x 32
    assert converted['Conv2d_1a_3x3.conv.weight'][5, 2, 0, 1] == float(w_tf[0, 1, 2, 5])
    # the file loads strictly into torchvision's Inception-v3 too
    inception_v3(weights=None, num_classes=NUM_LOGITS, aux_logits=False, init_weights=False).load_state_dict(converted)


def test_conversion_errors_name_the_variable():
    arrays = _tf_arrays_of(_random_state())
    arrays['mixed_17x17x768b/branch7x7/Conv_1/weights' + MOVING_AVERAGE_SUFFIX] = np.zeros((7, 1, 128, 128))
    with pytest.raises(ValueError, match=r"mixed_17x17x768b/branch7x7/Conv_1/weights/ExponentialMovingAverage"):
        state_dict_from_tf(arrays.__getitem__)
    with pytest.raises(KeyError, match='conv0/weights'):
        state_dict_from_tf({}.__getitem__, moving_average=False)


def test_average_pool_counts_only_pixels_inside_the_image():
    # TF SAME average pooling: a corner of a 3 x 3 window over an all-ones map stays 1
    # (torchvision's count_include_pad=True would give 4 / 9); built from one-pixel parts:
    torch.manual_seed(0)
    model = CUBInception3().eval()
    block = model.Mixed_5b
    x = torch.rand(1, 192, 5, 5)
    pooled = torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
    assert torch.allclose(pooled[0, :, 0, 0], x[0, :, :2, :2].mean((1, 2)))
    with torch.no_grad():
        out = block(x)
        expect_pool = block.branch_pool(pooled)
    assert torch.allclose(out[:, -32:], expect_pool)


def _load_tool():
    spec = importlib.util.spec_from_file_location('convert_stackgan_inception', TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_missing_tensorflow_gives_one_line_naming_the_requirements(tmp_path, monkeypatch, capsys):
    (tmp_path / 'checkpoint').write_text('model_checkpoint_path: "model.ckpt-5000"\n')
    monkeypatch.setitem(sys.modules, 'tensorflow', None)          # import tensorflow raises ImportError
    assert _load_tool().main([str(tmp_path), str(tmp_path / 'out.pth')]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and CONVERT_REQUIREMENTS in lines[0], lines
    assert not (tmp_path / 'out.pth').exists()


def test_load_cub_inception_strict_and_missing_file_names_the_converter(tmp_path):
    with pytest.raises(FileNotFoundError, match='tools/convert_stackgan_inception.py'):
        load_cub_inception(str(tmp_path / 'cub.pth'))
    state = state_dict_from_tf(_tf_arrays_of(_random_state()).__getitem__)
    torch.save(state, tmp_path / 'cub.pth')
    model = load_cub_inception(str(tmp_path / 'cub.pth'))
    assert not model.training and torch.equal(model.fc.bias, state['fc.bias'])
    del state['fc.bias']
    torch.save(state, tmp_path / 'broken.pth')
    with pytest.raises(CheckpointError, match='fc.bias'):
        load_cub_inception(str(tmp_path / 'broken.pth'))


def test_missing_checkpoint_names_the_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"model\.ckpt-5000' not found"):
        convert_tf_checkpoint(str(tmp_path / 'model.ckpt-5000'))


# ----------------------------------------------------------------------------- against TensorFlow
def _tf_slim_inception(tf, images, num_classes: int = NUM_LOGITS):
    """StackGAN's network (tensorflow/models inception/slim inception_v3, inference) in plain
    tf.compat.v1 ops, its variables created under the same variable scopes, so they get the
    checkpoint's names: Conv/Conv_1.. per branch, BatchNorm without gamma (epsilon 0.001),
    moving statistics in MOVING_AVERAGE_VARIABLES; the auxiliary head is built (its variables
    are in the checkpoint) but unused."""
    v1 = tf.compat.v1
    stat_collections = [v1.GraphKeys.GLOBAL_VARIABLES, v1.GraphKeys.MOVING_AVERAGE_VARIABLES]

    def conv(x, out, kernel, stride=1, padding='SAME', scope=None):
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        cin = int(x.shape[-1])
        with v1.variable_scope(scope, default_name='Conv'):
            w = v1.get_variable('weights', [kh, kw, cin, out],
                                initializer=v1.random_normal_initializer(stddev=(2.0 / (kh * kw * cin)) ** 0.5))
            y = tf.nn.conv2d(x, w, [1, stride, stride, 1], padding)
            with v1.variable_scope('BatchNorm'):
                beta = v1.get_variable('beta', [out], initializer=v1.random_normal_initializer(stddev=0.1))
                mean = v1.get_variable('moving_mean', [out], initializer=v1.random_normal_initializer(stddev=0.1),
                                       trainable=False, collections=stat_collections)
                var = v1.get_variable('moving_variance', [out], initializer=v1.random_uniform_initializer(0.5, 1.5),
                                      trainable=False, collections=stat_collections)
            return tf.nn.relu(tf.nn.batch_normalization(y, mean, var, beta, None, 0.001))

    def fc(x, out, scope=None):
        with v1.variable_scope(scope, default_name='FC'):
            w = v1.get_variable('weights', [int(x.shape[-1]), out],
                                initializer=v1.random_normal_initializer(stddev=int(x.shape[-1]) ** -0.5))
            b = v1.get_variable('biases', [out], initializer=v1.random_normal_initializer(stddev=0.1))
            return tf.matmul(x, w) + b

    def avg3(x):
        return tf.nn.avg_pool2d(x, 3, 1, 'SAME')

    def max3s2(x):
        return tf.nn.max_pool2d(x, 3, 2, 'VALID')

    def scope(name):
        return v1.variable_scope(name)

    net = conv(images, 32, 3, 2, 'VALID', 'conv0')
    net = conv(net, 32, 3, 1, 'VALID', 'conv1')
    net = conv(net, 64, 3, 1, 'SAME', 'conv2')
    net = max3s2(net)
    net = conv(net, 80, 1, 1, 'VALID', 'conv3')
    net = conv(net, 192, 3, 1, 'VALID', 'conv4')
    net = max3s2(net)
    for name, pool_channels in (('mixed_35x35x256a', 32), ('mixed_35x35x288a', 64), ('mixed_35x35x288b', 64)):
        with scope(name):
            with scope('branch1x1'):
                b1 = conv(net, 64, 1)
            with scope('branch5x5'):
                b5 = conv(conv(net, 48, 1), 64, 5)
            with scope('branch3x3dbl'):
                b3 = conv(conv(conv(net, 64, 1), 96, 3), 96, 3)
            with scope('branch_pool'):
                bp = conv(avg3(net), pool_channels, 1)
            net = tf.concat([b1, b5, b3, bp], 3)
    with scope('mixed_17x17x768a'):
        with scope('branch3x3'):
            b3 = conv(net, 384, 3, 2, 'VALID')
        with scope('branch3x3dbl'):
            b3d = conv(conv(conv(net, 64, 1), 96, 3), 96, 3, 2, 'VALID')
        net = tf.concat([b3, b3d, max3s2(net)], 3)
    for name, c7 in (('mixed_17x17x768b', 128), ('mixed_17x17x768c', 160), ('mixed_17x17x768d', 160),
                     ('mixed_17x17x768e', 192)):
        with scope(name):
            with scope('branch1x1'):
                b1 = conv(net, 192, 1)
            with scope('branch7x7'):
                b7 = conv(conv(conv(net, c7, 1), c7, [1, 7]), 192, [7, 1])
            with scope('branch7x7dbl'):
                b7d = conv(net, c7, 1)
                for out, kernel in ((c7, [7, 1]), (c7, [1, 7]), (c7, [7, 1]), (192, [1, 7])):
                    b7d = conv(b7d, out, kernel)
            with scope('branch_pool'):
                bp = conv(avg3(net), 192, 1)
            net = tf.concat([b1, b7, b7d, bp], 3)
    with scope('aux_logits'):
        aux = tf.nn.avg_pool2d(net, 5, 3, 'VALID')
        aux = conv(aux, 128, 1, scope='proj')
        aux = conv(aux, 768, [5, 5], padding='VALID')
        fc(tf.reshape(aux, [-1, 768]), num_classes)
    with scope('mixed_17x17x1280a'):
        with scope('branch3x3'):
            b3 = conv(conv(net, 192, 1), 320, 3, 2, 'VALID')
        with scope('branch7x7x3'):
            b7 = conv(conv(conv(conv(net, 192, 1), 192, [1, 7]), 192, [7, 1]), 192, 3, 2, 'VALID')
        net = tf.concat([b3, b7, max3s2(net)], 3)
    for name in ('mixed_8x8x2048a', 'mixed_8x8x2048b'):
        with scope(name):
            with scope('branch1x1'):
                b1 = conv(net, 320, 1)
            with scope('branch3x3'):
                b3 = conv(net, 384, 1)
                b3 = tf.concat([conv(b3, 384, [1, 3]), conv(b3, 384, [3, 1])], 3)
            with scope('branch3x3dbl'):
                b3d = conv(conv(net, 448, 1), 384, 3)
                b3d = tf.concat([conv(b3d, 384, [1, 3]), conv(b3d, 384, [3, 1])], 3)
            with scope('branch_pool'):
                bp = conv(avg3(net), 192, 1)
            net = tf.concat([b1, b3, b3d, bp], 3)
    with scope('logits'):
        net = tf.nn.avg_pool2d(net, 8, 1, 'VALID')
        return fc(tf.reshape(net, [-1, 2048]), num_classes, scope='logits')


@pytest.mark.slow
def test_converted_network_matches_tensorflow_logits(tmp_path):
    tf = pytest.importorskip('tensorflow', reason='TensorFlow not installed (pip install -r '
                             'requirements-convert.txt): the TF-vs-PyTorch logit check is skipped')
    v1 = tf.compat.v1
    prefix = str(tmp_path / 'birds_valid299' / 'model.ckpt-5000')
    rng = np.random.RandomState(0)

    # a checkpoint as StackGAN's training leaves it: variables, their moving averages, a step
    with tf.Graph().as_default():
        v1.set_random_seed(0)
        _tf_slim_inception(tf, v1.placeholder(tf.float32, [None, 299, 299, 3]))
        v1.train.get_or_create_global_step()
        averaged = v1.trainable_variables() + v1.moving_average_variables()
        ema = v1.train.ExponentialMovingAverage(0.9999)
        ema.apply(averaged)
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            # each average differs from its variable, so the test sees which one is converted
            sess.run([ema.average(v).assign(v * v1.random_uniform(v.shape, 0.7, 1.3)) for v in averaged])
            v1.train.Saver().save(sess, prefix)

    # an image smooth enough that shrinking and enlarging both matter, and one of noise
    yy, xx = np.mgrid[0:256, 0:256]
    smooth = np.stack([(127 + 120 * np.sin(xx / 9.0 + c) * np.cos(yy / 13.0)) for c in range(3)], 0)
    images = torch.from_numpy(np.stack([smooth, rng.randint(0, 256, (3, 256, 256))]).astype(np.uint8))
    x = protocol_inputs(images)

    # the protocol's evaluation graph: restore the moving averages, run the logits
    with tf.Graph().as_default():
        inputs = v1.placeholder(tf.float32, [None, 299, 299, 3], name='inputs')
        logits = _tf_slim_inception(tf, inputs)
        saver = v1.train.Saver(v1.train.ExponentialMovingAverage(0.9999).variables_to_restore())
        with v1.Session() as sess:
            saver.restore(sess, prefix)
            tf_logits = torch.from_numpy(sess.run(logits, {inputs: x.permute(0, 2, 3, 1).numpy()})).double()

    tool = _load_tool()
    out = str(tmp_path / 'cub_inception.pth')
    assert tool.main([prefix, out]) == 0
    assert tool.main([prefix, out]) == 2                       # no silent overwrite
    state = torch.load(out, weights_only=True)
    model = CUBInception3().eval()
    model.load_state_dict(state)
    torch_logits = cub_logits(model, images)
    diff = float((torch_logits - tf_logits).abs().max())
    print(f'max |logit difference| TF vs PyTorch: {diff:.3g} (logits up to {float(tf_logits.abs().max()):.3g})')
    assert diff <= 1e-4
    assert float(tf_logits.std()) > 0.1                       # logits that are not all alike

    # the same weights in torchvision's Inception3 (padding counted in the average pools),
    # and the raw weights instead of the averages, are both detectably different
    plain = inception_v3(weights=None, num_classes=NUM_LOGITS, aux_logits=False, init_weights=False).eval()
    plain.load_state_dict(state)
    with torch.no_grad():
        assert float((plain(x).double() - tf_logits).abs().max()) > 1e-3
    raw, _ = convert_tf_checkpoint(prefix, moving_average=False)
    model.load_state_dict(raw)
    assert float((cub_logits(model, images) - tf_logits).abs().max()) > 1e-3
