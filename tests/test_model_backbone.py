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
