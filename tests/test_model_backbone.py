import keras
import numpy as np
import pytest
import tensorflow as tf

from nlf_tf.model import backbone as backbone_lib


def test_name_parsing_accepts_aliases():
    parse = backbone_lib.canonical_backbone_name
    assert parse('efficientnetv2-s') == 'efficientnetv2-s'
    assert parse('efficientnetv2_s') == 'efficientnetv2-s'
    assert parse('EfficientNetV2-B0') == 'efficientnetv2-b0'
    assert parse('efficientnetv2b3') == 'efficientnetv2-b3'
    assert parse('mobilenetv3small') == 'mobilenetv3small'
    assert parse('mobilenet_v3_large') == 'mobilenetv3large'
    assert parse('resnet50') == 'resnet50'
    assert parse('ResNet101V2') == 'resnet101v2'
    assert parse('resnet152_v2') == 'resnet152v2'


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as info:
        backbone_lib.canonical_backbone_name('efficientnetv2-xxl')
    message = str(info.value)
    assert 'efficientnetv2-xxl' in message
    for name in ('efficientnetv2-s', 'mobilenetv3small', 'resnet50', 'resnet50v2'):
        assert name in message
    with pytest.raises(ValueError):
        backbone_lib.build_backbone('vgg16', 64)


def test_proc_side_must_be_multiple_of_32():
    with pytest.raises(ValueError, match='proc_side'):
        backbone_lib.build_backbone('mobilenetv3small', 80)


@pytest.mark.parametrize('name, channels, mode', [
    ('efficientnetv2-b0', 1280, 'tf'),
    ('mobilenetv3small', 576, 'scale255'),
    ('resnet50', 2048, 'caffe'),
])
def test_cheap_backbones_have_stride_32(name, channels, mode):
    model = backbone_lib.build_backbone(name, 64)
    assert model.get_layer('preprocessing').mode == mode
    images = tf.random.stateless_uniform([2, 64, 64, 3], seed=[1, 2])
    features = model(images, training=False)
    assert tuple(features.shape) == (2, 2, 2, channels)
    assert np.all(np.isfinite(features.numpy()))
    # The spatial input size is open: 96 px gives a 3x3 map.
    assert tuple(model.compute_output_shape((1, 96, 96, 3))) == (1, 3, 3, channels)


def test_resnet_v2_uses_tf_preprocessing():
    model = backbone_lib.build_backbone('resnet50v2', 64)
    assert model.get_layer('preprocessing').mode == 'tf'
    assert tuple(model.output.shape[1:]) == (None, None, 2048)


def test_mobilenet_keeps_its_own_rescaling():
    # 255·x followed by the network's own [0, 255] -> [-1, 1] rescaling = 2x − 1 overall.
    model = backbone_lib.build_backbone('mobilenetv3small', 64)
    network = [layer for layer in model.layers if isinstance(layer, keras.Model)][0]
    rescaling = [layer for layer in network.layers if isinstance(layer, keras.layers.Rescaling)]
    assert len(rescaling) == 1
    x = np.array([[0.0, 0.25, 1.0]], np.float32)
    scaled = model.get_layer('preprocessing')(x)
    np.testing.assert_allclose(rescaling[0](scaled).numpy(), 2 * x - 1, atol=1e-6)


def test_preprocessing_modes():
    x = np.random.RandomState(0).uniform(size=(2, 3, 3, 3)).astype(np.float32)
    mean_caffe = np.array([103.939, 116.779, 123.68], np.float32)
    expected = {
        'tf': 2 * x - 1,
        'caffe': 255 * x - mean_caffe,  # no RGB->BGR swap, as in NLF
        'scale255': 255 * x,
        'torch': (x - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]),
    }
    for mode, want in expected.items():
        layer = backbone_lib.ImagePreprocessing(mode)
        np.testing.assert_allclose(layer(x).numpy(), want, rtol=1e-5, atol=1e-4)
        clone = backbone_lib.ImagePreprocessing.from_config(layer.get_config())
        assert clone.mode == mode
    with pytest.raises(ValueError, match='mode'):
        backbone_lib.ImagePreprocessing('bgr')


def test_dtype_policy_argument_is_scoped():
    before = keras.config.dtype_policy().name
    model = backbone_lib.build_backbone('mobilenetv3small', 64, dtype_policy='mixed_float16')
    assert keras.config.dtype_policy().name == before
    features = model(tf.zeros([1, 64, 64, 3]), training=False)
    assert features.dtype == tf.float16
    assert all(v.dtype == 'float32' for v in model.weights)


def test_momentum_adjustment():
    assert backbone_lib.adjusted_norm_momentum(0.9) == pytest.approx(0.9)
    assert backbone_lib.adjusted_norm_momentum(0.9, grad_accum_steps=2) == pytest.approx(
        0.9 ** 0.5)
    assert backbone_lib.adjusted_norm_momentum(0.9, num_replicas=4) == pytest.approx(0.975)
    assert backbone_lib.adjusted_norm_momentum(0.9, 3, 2) == pytest.approx(0.95 ** (1 / 3))
    with pytest.raises(ValueError):
        backbone_lib.adjusted_norm_momentum(0.9, grad_accum_steps=0)

    model = backbone_lib.build_backbone('mobilenetv3small', 64)
    n_changed = backbone_lib.adjust_batchnorm_momenta(model, grad_accum_steps=2)
    bn_layers = [layer for layer in model._flatten_layers()
                 if isinstance(layer, keras.layers.BatchNormalization)]
    assert n_changed == len(bn_layers) > 10
    # Keras MobileNetV3 uses momentum 0.999.
    for layer in bn_layers:
        assert layer.momentum == pytest.approx(0.999 ** 0.5)


# ----------------------------------------------------------------------------------------
# Pixel grid of the feature map (centered_stride)
# ----------------------------------------------------------------------------------------

def test_feature_cell_grid_hand_computed():
    # A stride-s layer with kernel k and p zeros before maps output index o to input position
    # s·o + (k−1)/2 − p (in units of its input). Per layer, in image pixels:
    #   3x3 s2 'same' (p = 0 for even sizes):          +1·1 = 1,  stride 2
    #   ZeroPadding 2 + 5x5 s2 'valid':         −2·2 + 2·2 = 0,  stride 4
    #   3x3 max-pool s2 'same' (p = 0):                  +1·4 = 4,  stride 8
    #   Cropping 1 before:                               +1·8 = 8,  stride 8
    #   1x1 s2 'valid':                                       0,  stride 16
    # Total: cell j is centred on pixel 16j + 13.
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(2, 3, strides=2, padding='same')(inputs)
    x = keras.layers.ZeroPadding2D(2)(x)
    x = keras.layers.Conv2D(2, 5, strides=2, padding='valid')(x)
    x = keras.layers.MaxPooling2D(3, strides=2, padding='same')(x)
    x = keras.layers.Cropping2D(((1, 0), (1, 0)))(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(2, 1, strides=2)(x)
    assert backbone_lib.feature_cell_grid(keras.Model(inputs, x)) == (16, 13)

    # A residual sum of tensors on different grids is rejected.
    a = keras.layers.Conv2D(2, 3, strides=2, padding='same')(inputs)  # 2o + 1
    b = keras.layers.Conv2D(2, 1, strides=2)(inputs)  # 2o
    with pytest.raises(ValueError, match='different pixel grids'):
        backbone_lib.feature_cell_grid(keras.Model(inputs, keras.layers.Add()([a, b])))
    # Rows and columns on different grids.
    c = keras.layers.Conv2D(2, (3, 1), strides=2, padding='same')(inputs)
    with pytest.raises(ValueError, match='Rows and columns'):
        backbone_lib.feature_cell_grid(keras.Model(inputs, c))


def _set_probe_weights(model, seed=0):
    """Weights for locating receptive-field centres from input gradients: every conv kernel
    positive, mirror-symmetric, dominated by its centre tap (so the gradient of one feature
    cell is concentrated and not truncated at the image border) and normalised to sum 1;
    batch norm the identity; squeeze-excitation branches zeroed (their global pooling spreads
    gradient uniformly over the image, which has no centre)."""
    rng = np.random.RandomState(seed)
    for layer in model._flatten_layers():
        if not layer.weights or layer._layers:
            continue
        if 'squeeze_excite' in layer.name or '_se_' in layer.name:
            for w in layer.weights:
                w.assign(np.zeros(w.shape, np.float32))
        elif isinstance(layer, keras.layers.BatchNormalization):
            layer.set_weights([np.ones(layer.gamma.shape), np.zeros(layer.beta.shape),
                               np.zeros(layer.moving_mean.shape),
                               np.ones(layer.moving_variance.shape)])
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
            kh, kw = layer.kernel.shape[:2]
            k = rng.uniform(0, 0.002, layer.kernel.shape)
            k = (k + k[::-1] + k[:, ::-1] + k[::-1, ::-1]) / 4
            k[kh // 2, kw // 2] += 1
            sum_axes = (0, 1) if isinstance(layer, keras.layers.DepthwiseConv2D) else (0, 1, 2)
            layer.kernel.assign((k / k.sum(axis=sum_axes, keepdims=True)).astype(np.float32))
            if layer.use_bias:
                layer.bias.assign(np.zeros(layer.bias.shape, np.float32))
        else:
            raise AssertionError(f'unexpected weight layer {layer.name}')


def _gradient_centre(model, side, j):
    """(centre of mass, argmax) in pixels (y, x) of d feature[j, j] / d image."""
    yy, xx = np.mgrid[:side, :side].astype(np.float32)
    # Positive everywhere after every preprocessing mode (so all activations are in their
    # increasing range); the period-4 ripple has its maxima on the stride-4 grid so ResNet's
    # 3x3 max-pool routes gradients to its window centre instead of breaking ties top-left.
    image = 0.75 + 0.1 * (np.cos(np.pi * yy / 2) + np.cos(np.pi * xx / 2))
    x = tf.constant(np.repeat(image[None, :, :, None], 3, axis=-1))
    with tf.GradientTape() as tape:
        tape.watch(x)
        cell = tf.reduce_sum(model(x, training=False)[0, j, j])
    g = tf.reduce_sum(tape.gradient(cell, x)[0], axis=-1).numpy().astype(np.float64)
    assert g.min() >= -1e-6 * g.max()
    com = np.array([(g * yy).sum(), (g * xx).sum()]) / g.sum()
    return com, np.unravel_index(np.argmax(g), g.shape)


@pytest.mark.parametrize('name', ['efficientnetv2-b0', 'mobilenetv3small', 'resnet50'])
@pytest.mark.parametrize('centered', [True, False])
def test_receptive_field_centres(name, centered):
    # 96 px: 3x3 feature map; the interior cell j = 1 must be centred on pixel 48 (centred
    # stride, 32j + 16) or 32 (32j).
    model = backbone_lib.build_backbone(name, 96, centered_stride=centered)
    expected = 48 if centered else 32
    assert backbone_lib.feature_cell_grid(model) == (32, expected - 32)
    _set_probe_weights(model)
    com, peak = _gradient_centre(model, 96, 1)
    np.testing.assert_allclose(com, [expected, expected], atol=0.5)
    assert tuple(peak) == (expected, expected)


@pytest.mark.parametrize('name', ['efficientnetv2-b0', 'mobilenetv3small'])
def test_stock_keras_networks_are_off_centre(name):
    # Documents why the networks are rebuilt: keras.applications' 'same'-style padding
    # shifts by one input unit at every stride-2 layer (1 + 2 + 4 + 8 + 16 = 31 px).
    constructor, mode, kwargs = backbone_lib._REGISTRY[name]
    network = constructor(include_top=False, weights=None, input_shape=(None, None, 3),
                          **kwargs)
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, network(backbone_lib.ImagePreprocessing(mode)(inputs)))
    assert backbone_lib.feature_cell_grid(model) == (32, 31)
    _set_probe_weights(model)
    com, peak = _gradient_centre(model, 96, 1)
    np.testing.assert_allclose(com, [63, 63], atol=0.5)
    assert tuple(peak) == (63, 63)


def test_repadding_keeps_variables_and_stock_resnet_is_reused():
    network = keras.applications.MobileNetV3Small(
        include_top=False, weights=None, input_shape=(None, None, 3))
    repadded = backbone_lib.repad_strided_layers(network, centered_stride=True)
    assert repadded is not network
    assert [(w.path, w.shape) for w in repadded.weights] == [
        (w.path, w.shape) for w in network.weights]
    # The stem conv lost its 'same' padding for explicit symmetric zeros; the dedicated pads of
    # the stride-2 depthwise convs became (1, 1) (3x3) and, in the last stride-2 stage
    # (input stride 16), (1, 3) (5x5).
    assert repadded.get_layer('conv').padding == 'valid'
    assert repadded.get_layer('conv_grid_pad').padding == ((1, 1), (1, 1))
    assert repadded.get_layer('expanded_conv_depthwise_pad').padding == ((1, 1), (1, 1))
    assert repadded.get_layer('expanded_conv_3_depthwise_pad').padding == ((2, 2), (2, 2))
    assert repadded.get_layer('expanded_conv_8_depthwise_pad').padding == ((1, 3), (1, 3))

    resnet = keras.applications.ResNet50(
        include_top=False, weights=None, input_shape=(None, None, 3))
    assert backbone_lib.repad_strided_layers(resnet, centered_stride=False) is resnet
    shifted = backbone_lib.repad_strided_layers(resnet, centered_stride=True)
    # The 1x1 stride-2 convs of the last stride-2 stage (main path and shortcut) sample one
    # row/column later.
    for conv in ('conv5_block1_1_conv', 'conv5_block1_0_conv'):
        assert shifted.get_layer(f'{conv}_grid_crop').cropping == ((1, 0), (1, 0))
        assert shifted.get_layer(f'{conv}_grid_pad').padding == ((0, 1), (0, 1))
    assert 'conv4_block1_1_conv_grid_crop' not in [layer.name for layer in shifted.layers]
    # ceil(n/2) outputs like 'same', also for odd sizes.
    assert tuple(shifted.compute_output_shape((1, 80, 80, 3))) == (1, 3, 3, 2048)


# ----------------------------------------------------------------------------------------
# --load_backbone_from
# ----------------------------------------------------------------------------------------

def _perturb(model, seed):
    rng = np.random.RandomState(seed)
    for w in model.weights:
        if w.name == 'moving_variance':
            w.assign(rng.uniform(0.5, 1.5, w.shape).astype(np.float32))
        else:
            w.assign((w.numpy() * rng.uniform(0.8, 1.2, w.shape)
                      + rng.uniform(-0.05, 0.05, w.shape)).astype(np.float32))


def _weights_by_layer(model):
    return {layer.name: [w.numpy() for w in layer.weights]
            for layer in model._flatten_layers() if layer.weights and not layer._layers}


@pytest.fixture(scope='module')
def saved_backbone(tmp_path_factory):
    keras.config.set_dtype_policy('float32')
    directory = tmp_path_factory.mktemp('backbone_weights')
    source = backbone_lib.build_backbone('mobilenetv3small', 64)
    _perturb(source, seed=1)
    paths = {
        'weights': str(directory / 'source.weights.h5'),
        'keras': str(directory / 'source.keras'),
        'legacy': str(directory / 'source.h5'),
    }
    source.save_weights(paths['weights'])
    source.save(paths['keras'])
    source.save(paths['legacy'])
    return source, paths, directory


def test_load_backbone_weights_round_trip(saved_backbone):
    source, paths, _ = saved_backbone
    images = tf.random.stateless_uniform([2, 64, 64, 3], seed=[3, 4])
    want = source(images, training=False).numpy()
    target = backbone_lib.build_backbone('mobilenetv3small', 64)
    n_vars = len(target.weights)
    formats = {'weights': 'Keras weights file', 'keras': 'Keras model archive',
               'legacy': 'legacy HDF5 model'}
    for kind, path in paths.items():
        _perturb(target, seed=2)
        assert np.abs(target(images, training=False).numpy() - want).max() > 1e-3
        report = backbone_lib.load_backbone_weights(target, path)
        np.testing.assert_array_equal(target(images, training=False).numpy(), want)
        assert report.file_format == formats[kind]
        assert report.num_loaded_variables == report.num_backbone_variables == n_vars
        assert not report.skipped_layers and not report.skipped_variables
        assert not report.unused_file_layers
        assert report.matched_layers[:3] == ['conv', 'conv_bn', 'expanded_conv_depthwise']
        assert f'loaded {n_vars} of {n_vars}' in report.summary()


def test_load_backbone_weights_partial_file_reports_skips(saved_backbone, caplog):
    source, _, directory = saved_backbone
    network = [layer for layer in source.layers if isinstance(layer, keras.Model)][0]
    head = keras.Model(network.input, network.get_layer('expanded_conv_1_project_bn').output)
    path = str(directory / 'head.weights.h5')
    head.save_weights(path)
    in_file = [layer.name for layer in head.layers if layer.weights]

    target = backbone_lib.build_backbone('mobilenetv3small', 64)
    before = _weights_by_layer(target)
    with caplog.at_level('WARNING', logger='nlf_tf.model.backbone'):
        report = backbone_lib.load_backbone_weights(target, path)
    after, wanted = _weights_by_layer(target), _weights_by_layer(source)
    assert report.matched_layers == in_file
    assert report.num_loaded_variables == len(head.weights)
    assert set(report.skipped_layers) == set(after) - set(in_file)
    assert report.skipped_layers['conv_1'] == 'no layer of this name in the file'
    for name, values in after.items():
        reference = wanted[name] if name in in_file else before[name]
        for got, want in zip(values, reference):
            np.testing.assert_array_equal(got, want)
    assert 'skipped layer conv_1: no layer of this name in the file' in caplog.text


def test_load_backbone_weights_aligns_variables_by_shape(saved_backbone, tmp_path):
    # Keras 3 files store a layer's variables unnamed, in order. Extra variables on either
    # side (like renormalisation clipping scalars) must not shift the others.
    import h5py
    import shutil
    source, paths, _ = saved_backbone
    path = str(tmp_path / 'edited.weights.h5')
    shutil.copy(paths['weights'], path)
    with h5py.File(path, 'a') as f:
        groups = {}

        def collect(key, obj):  # (returning a value would stop visititems)
            if key.endswith('/vars') and 'name' in obj.attrs:
                groups[obj.attrs['name']] = obj

        f.visititems(collect)
        # conv_bn: (gamma, beta, mean, variance) -> (gamma, beta, 3 scalars, mean, variance).
        bn = groups['conv_bn']
        arrays = [bn[str(i)][()] for i in range(4)]
        for key in list(bn.keys()):
            del bn[key]
        for i, array in enumerate(arrays[:2] + [np.float32(1)] * 3 + arrays[2:]):
            bn[str(i)] = array
        # expanded_conv_project_bn: the moving variance is missing.
        del groups['expanded_conv_project_bn']['3']

    target = backbone_lib.build_backbone('mobilenetv3small', 64)
    old_variance = target.get_layer(index=-1).get_layer(
        'expanded_conv_project_bn').moving_variance.numpy()
    report = backbone_lib.load_backbone_weights(target, path)
    assert not report.skipped_layers
    assert report.num_loaded_variables == len(target.weights) - 1
    assert len(report.skipped_variables) == 1
    layer_name, var_name, reason = report.skipped_variables[0]
    assert (layer_name, var_name) == ('expanded_conv_project_bn', 'moving_variance')
    assert 'not in the file' in reason
    after, wanted = _weights_by_layer(target), _weights_by_layer(source)
    np.testing.assert_array_equal(after['expanded_conv_project_bn'][3], old_variance)
    for name, values in after.items():
        n = 3 if name == 'expanded_conv_project_bn' else len(values)
        for got, want in zip(values[:n], wanted[name][:n]):
            np.testing.assert_array_equal(got, want)


def test_load_backbone_weights_from_stock_keras_network(tmp_path):
    # A weights file of the stock keras.applications network (different nesting, 'same'
    # padding) loads by layer name into the rebuilt backbone.
    stock = keras.applications.MobileNetV3Small(
        include_top=False, weights=None, input_shape=(None, None, 3))
    _perturb(stock, seed=5)
    path = str(tmp_path / 'stock.weights.h5')
    stock.save_weights(path)
    target = backbone_lib.build_backbone('mobilenetv3small', 64)
    report = backbone_lib.load_backbone_weights(target, path)
    assert report.num_loaded_variables == len(stock.weights) == len(target.weights)
    wanted, got = _weights_by_layer(stock), _weights_by_layer(target)
    assert set(wanted) == set(got)
    for name in wanted:
        for a, b in zip(got[name], wanted[name]):
            np.testing.assert_array_equal(a, b)


def test_load_backbone_weights_errors(tmp_path):
    target = backbone_lib.build_backbone('mobilenetv3small', 64)
    missing = str(tmp_path / 'nope.weights.h5')
    with pytest.raises(FileNotFoundError) as info:
        backbone_lib.load_backbone_weights(target, missing)
    assert missing in str(info.value) and 'load_backbone_from' in str(info.value)

    unrelated = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name='dense_x')])
    unrelated_path = str(tmp_path / 'unrelated.weights.h5')
    unrelated.save_weights(unrelated_path)
    before = [w.numpy() for w in target.weights]
    with pytest.raises(ValueError, match='no layer of backbone'):
        backbone_lib.load_backbone_weights(target, unrelated_path)
    for w, old in zip(target.weights, before):
        np.testing.assert_array_equal(w.numpy(), old)

    text = tmp_path / 'notes.txt'
    text.write_text('not weights')
    with pytest.raises(ValueError, match='neither'):
        backbone_lib.load_backbone_weights(target, str(text))
    with pytest.raises(ValueError, match='directory'):
        backbone_lib.load_backbone_weights(target, str(tmp_path))
