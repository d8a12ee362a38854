import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from nlf_tf.model import field as field_lib

SMALL = dict(posenc_dim=16, hidden_layers=1, hidden_size=16, link_dim=8, depth=2,
             eigval_regul=1e-4, encoder_width=32, encoder_hidden=48)


def _gelu(x):
    # Exact (erf) GELU, elementwise with the standard library's erf.
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def _randomize(layer, seed=0):
    """Random values for all weights, biases included (the initial biases are all zero)."""
    rng = np.random.RandomState(seed)
    layer.set_weights([rng.normal(0, 0.3, w.shape).astype(np.float32)
                       for w in layer.get_weights()])


def _numpy_field(layer, points):
    x = (points - np.array(layer.canonical_center)) / np.array(layer.canonical_extent)

    def dense(d, x):
        kernel, bias = [w.numpy().astype(np.float64) for w in (d.kernel, d.bias)]
        return x @ kernel + bias

    x = _gelu(dense(layer.encoder_in, x)) / math.sqrt(layer.encoder_width)
    x = _gelu(dense(layer.encoder_hidden_layer, x))
    x = dense(layer.encoder_out, x)
    for d in layer.hidden_dense:
        x = _gelu(dense(d, x))
    return dense(layer.output_layer, x)


@pytest.mark.parametrize('hidden_layers', [0, 1, 2])
def test_forward_matches_numpy(hidden_layers):
    kwargs = dict(SMALL, hidden_layers=hidden_layers, canonical_center=(0.1, -0.3, 0.05),
                  canonical_extent=(1.8, 2.2, 0.9))
    layer = field_lib.LocalizerField(**kwargs)
    layer.build((None, 3))
    _randomize(layer, seed=hidden_layers)
    points = np.random.RandomState(5).normal(0, 0.5, (2, 7, 3)).astype(np.float32)
    out = layer(points)
    assert out.dtype == tf.float32
    assert tuple(out.shape) == (2, 7, (8 + 1) * (2 + 2))
    np.testing.assert_allclose(out.numpy(), _numpy_field(layer, points.astype(np.float64)),
                               rtol=1e-4, atol=1e-4)
    # Structure: GELU hidden layers, linear output, zero initial biases.
    assert len(layer.hidden_dense) == hidden_layers
    assert layer.output_layer.activation is keras.activations.linear


def test_initial_biases_are_zero_and_glorot_kernels():
    layer = field_lib.LocalizerField(**SMALL)
    layer.build((None, 3))
    for d in layer.hidden_dense + [layer.output_layer]:
        assert np.all(d.bias.numpy() == 0)
        fan_in, fan_out = d.kernel.shape
        limit = math.sqrt(6 / (fan_in + fan_out))
        assert np.abs(d.kernel.numpy()).max() <= limit


def test_regularizer_value_on_first_hidden_layer():
    layer = field_lib.LocalizerField(**dict(SMALL, hidden_layers=2))
    layer.build((None, 3))
    _randomize(layer)
    losses = layer.losses
    assert len(losses) == 1
    kernel = layer.hidden_dense[0].kernel.numpy()
    assert kernel.shape[0] == SMALL['posenc_dim']
    expected = 1e-4 * np.sum(kernel.astype(np.float64) ** 2) / SMALL['posenc_dim']
    np.testing.assert_allclose(float(losses[0]), expected, rtol=1e-5)


def test_regularizer_moves_to_output_without_hidden_layers():
    layer = field_lib.LocalizerField(**dict(SMALL, hidden_layers=0, eigval_regul=3e-3))
    layer.build((None, 3))
    assert layer.output_layer.kernel_regularizer is not None
    kernel = layer.output_layer.kernel.numpy()
    expected = 3e-3 * np.sum(kernel.astype(np.float64) ** 2) / SMALL['posenc_dim']
    np.testing.assert_allclose(float(layer.losses[0]), expected, rtol=1e-5)


def test_regularizer_only_counts_first_n_rows():
    reg = field_lib.FirstLayerRegularizer(2, 0.5)
    w = tf.constant([[1.0, 2.0], [3.0, 0.0], [100.0, 100.0]])
    # 0.5 · (1 + 4 + 9) / 2
    assert float(reg(w)) == pytest.approx(3.5)
    clone = keras.regularizers.deserialize(keras.regularizers.serialize(reg))
    assert isinstance(clone, field_lib.FirstLayerRegularizer)
    assert clone.get_config() == {'n_regularized': 2, 'factor': 0.5}


def test_get_config_round_trip():
    layer = field_lib.LocalizerField(**dict(SMALL, canonical_center=(0, -0.3, 0)))
    layer.build((None, 3))
    _randomize(layer, seed=3)
    clone = field_lib.LocalizerField.from_config(layer.get_config())
    clone.build((None, 3))
    clone.set_weights(layer.get_weights())
    assert clone.canonical_center == (0.0, -0.3, 0.0)
    points = np.random.RandomState(1).normal(size=(5, 3)).astype(np.float32)
    np.testing.assert_array_equal(clone(points).numpy(), layer(points).numpy())
    assert float(clone.losses[0]) == pytest.approx(float(layer.losses[0]))


def test_bad_arguments():
    with pytest.raises(ValueError, match='field_type'):
        field_lib.LocalizerField(**SMALL, field_type='fourier')
    with pytest.raises(ValueError, match='canonical_extent'):
        field_lib.LocalizerField(**SMALL, canonical_extent=(1, 0, 1))
    with pytest.raises(ValueError, match='canonical_center'):
        field_lib.LocalizerField(**SMALL, canonical_center=(1, 2))
    with pytest.raises(ValueError, match='posenc_dim'):
        field_lib.LocalizerField(**dict(SMALL, posenc_dim=0))


def test_mixed_float16_output(mixed_policy):
    layer = field_lib.LocalizerField(**SMALL)
    layer.build((None, 3))
    assert all(v.dtype == 'float32' for v in layer.weights)
    points = tf.random.stateless_normal([3, 4, 3], seed=[0, 1])
    out = layer(points)
    assert out.dtype == tf.float16
    assert np.all(np.isfinite(out.numpy()))
    assert layer.losses[0].dtype == tf.float32


# ---------------------------------------------------------------------------------------------
# GPS field (tiny assets in NLF's layout: F Fourier features, H hidden, O outputs)

GPS_F, GPS_H, GPS_O, GPS_K = 16, 32, 24, 20  # K = posenc_dim < O: the first K outputs are used
GPS_SMALL = dict(SMALL, posenc_dim=GPS_K, encoder_width=GPS_F, encoder_hidden=GPS_H,
                 field_type='gps')


def _gps_arrays(seed=0):
    rng = np.random.RandomState(seed)
    return dict(
        W_r=rng.normal(0, 12, (3, GPS_F // 2)),
        dense1_kernel=rng.normal(0, 0.3, (GPS_F, GPS_H)),
        dense1_bias=rng.normal(0, 0.3, GPS_H),
        dense2_kernel=rng.normal(0, 0.3, (GPS_H, GPS_O)),
        dense2_bias=rng.normal(0, 0.3, GPS_O))


def _write_gps_assets(folder, seed=0):
    """Writes the three asset files; returns (encoder arrays, nodes, eigenvalues)."""
    rng = np.random.RandomState(seed + 100)
    arrays = _gps_arrays(seed)
    field_lib.gps_weights_from_arrays(**arrays, path=str(folder / 'gps_weights.npz'))
    # An asymmetric box: min/max differ per axis and the centre is not the origin.
    nodes = rng.uniform([-0.9, -1.1, -0.2], [0.8, 0.7, 0.25], (60, 3))
    np.save(folder / 'canonical_nodes3.npy', nodes)
    eigvals = np.concatenate([[0.0], np.sort(rng.uniform(0.5, 40.0, GPS_O))])  # 25 values
    np.save(folder / 'canonical_eigval3.npy', eigvals)
    return arrays, nodes, eigvals


def _numpy_gps_encoding(arrays, nodes, eigvals, points, posenc_dim=GPS_K):
    """NLF's GPSBaseModel + eigenvalue scaling, straight from the asset arrays."""
    mini, maxi = nodes.min(axis=0), nodes.max(axis=0)
    x = (points - (mini + maxi) / 2) / (maxi - mini)
    y = x @ arrays['W_r']
    f = np.concatenate([np.sin(y), np.sin(y + np.pi / 2)], axis=-1) / math.sqrt(GPS_F)
    h = _gelu(f @ arrays['dense1_kernel'] + arrays['dense1_bias'])
    e = (h @ arrays['dense2_kernel'] + arrays['dense2_bias'])[..., :posenc_dim]
    return e * 0.1 / np.sqrt(eigvals[1:posenc_dim + 1])


def _numpy_head_layers(layer, x):
    def dense(d, x):
        return x @ d.kernel.numpy().astype(np.float64) + d.bias.numpy().astype(np.float64)

    for d in layer.hidden_dense:
        x = _gelu(dense(d, x))
    return dense(layer.output_layer, x)


def _randomize_head(layer, seed=0):
    rng = np.random.RandomState(seed)
    for d in layer.hidden_dense + [layer.output_layer]:
        d.set_weights([rng.normal(0, 0.3, w.shape).astype(np.float32)
                       for w in d.get_weights()])


def _points_in_box(nodes, shape, seed=7):
    rng = np.random.RandomState(seed)
    return rng.uniform(nodes.min(axis=0), nodes.max(axis=0), shape + (3,)).astype(np.float32)


@pytest.fixture
def gps_dir(tmp_path):
    assets = _write_gps_assets(tmp_path)
    return tmp_path, assets


@pytest.mark.parametrize('hidden_layers', [0, 1, 2])
def test_gps_forward_matches_numpy(gps_dir, hidden_layers):
    folder, (arrays, nodes, eigvals) = gps_dir
    layer = field_lib.LocalizerField(**dict(GPS_SMALL, hidden_layers=hidden_layers),
                                     gps_dir=str(folder))
    layer.build((None, 3))
    _randomize_head(layer, seed=hidden_layers)
    points = _points_in_box(nodes, (2, 5))
    out = layer(points)
    assert out.dtype == tf.float32
    assert tuple(out.shape) == (2, 5, (8 + 1) * (2 + 2))
    encoding = _numpy_gps_encoding(arrays, nodes, eigvals, points.astype(np.float64))
    np.testing.assert_allclose(layer.positional_encoding(points).numpy(), encoding,
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out.numpy(), _numpy_head_layers(layer, encoding),
                               rtol=1e-4, atol=1e-5)


def test_gps_eigenvalue_scaling_and_box(gps_dir):
    folder, (arrays, nodes, eigvals) = gps_dir
    layer = field_lib.LocalizerField(**GPS_SMALL, gps_dir=str(folder))
    layer.build((None, 3))
    # λ_0 = 0 is dropped: scale k uses λ_{k+1}; nothing is infinite.
    np.testing.assert_allclose(layer.gps_eigval_scales.numpy(),
                               0.1 / np.sqrt(eigvals[1:GPS_K + 1]), rtol=1e-6)
    np.testing.assert_allclose(layer.gps_box_center.numpy(),
                               (nodes.min(0) + nodes.max(0)) / 2, rtol=1e-6)
    np.testing.assert_allclose(layer.gps_box_extent.numpy(), nodes.max(0) - nodes.min(0),
                               rtol=1e-6)
    # The encoding divided by the scales is the raw network output (first K columns).
    points = _points_in_box(nodes, (6,))
    raw = _numpy_gps_encoding(arrays, nodes, np.ones_like(eigvals) * 0.01, points)
    np.testing.assert_allclose(
        layer.positional_encoding(points).numpy() / layer.gps_eigval_scales.numpy(), raw,
        rtol=1e-4, atol=1e-5)
    assert len(layer.gps_eigval_scales.numpy()) == GPS_K


def test_vanilla_has_no_eigenvalue_scaling():
    layer = field_lib.LocalizerField(**SMALL)
    layer.build((None, 3))
    assert not hasattr(layer, 'gps_eigval_scales')
    points = np.random.RandomState(2).normal(0, 0.4, (4, 3)).astype(np.float32)
    x = points / 2.0
    d = [(l.kernel.numpy(), l.bias.numpy()) for l in layer.encoder_layers]
    x = _gelu(x @ d[0][0] + d[0][1]) / math.sqrt(SMALL['encoder_width'])
    x = _gelu(x @ d[1][0] + d[1][1]) @ d[2][0] + d[2][1]
    np.testing.assert_allclose(layer.positional_encoding(points).numpy(), x, rtol=1e-4,
                               atol=1e-5)


def test_gps_explicit_paths_without_folder(gps_dir, tmp_path_factory):
    folder, (arrays, nodes, eigvals) = gps_dir
    other = tmp_path_factory.mktemp('other')
    # A second weight file elsewhere overrides the folder's one.
    arrays2 = _gps_arrays(seed=5)
    field_lib.gps_weights_from_arrays(**arrays2, path=str(other / 'w.npz'))
    layer = field_lib.LocalizerField(
        **GPS_SMALL, gps_dir=str(folder), gps_weights_path=str(other / 'w.npz'))
    points = _points_in_box(nodes, (3,))
    np.testing.assert_allclose(layer.positional_encoding(points).numpy(),
                               _numpy_gps_encoding(arrays2, nodes, eigvals, points), rtol=1e-4,
                               atol=1e-6)
    layer = field_lib.LocalizerField(
        **GPS_SMALL, gps_weights_path=folder / 'gps_weights.npz',
        gps_nodes_path=folder / 'canonical_nodes3.npy',
        gps_eigval_path=folder / 'canonical_eigval3.npy')
    np.testing.assert_allclose(layer.positional_encoding(points).numpy(),
                               _numpy_gps_encoding(arrays, nodes, eigvals, points), rtol=1e-4,
                               atol=1e-6)


@pytest.mark.parametrize('file_name', ['gps_weights.npz', 'canonical_nodes3.npy',
                                       'canonical_eigval3.npy'])
def test_gps_missing_file_is_named(gps_dir, file_name):
    folder, _ = gps_dir
    (folder / file_name).unlink()
    with pytest.raises(FileNotFoundError) as info:
        field_lib.LocalizerField(**GPS_SMALL, gps_dir=str(folder))
    assert file_name in str(info.value)
    assert '--field_gps_dir' in str(info.value)


def test_gps_without_folder_names_the_flag(gps_dir):
    folder, _ = gps_dir
    with pytest.raises(ValueError, match='--field_gps_dir'):
        field_lib.LocalizerField(**GPS_SMALL)
    with pytest.raises(ValueError, match='--field_gps_dir'):
        field_lib.LocalizerField(**GPS_SMALL, gps_dir='')
    # Only two of the three explicit paths: the third file is named.
    with pytest.raises(ValueError, match='canonical_eigval3.npy'):
        field_lib.LocalizerField(**GPS_SMALL, gps_weights_path=folder / 'gps_weights.npz',
                                 gps_nodes_path=folder / 'canonical_nodes3.npy')
    with pytest.raises(FileNotFoundError, match='gps_nodes_path'):
        field_lib.LocalizerField(**GPS_SMALL, gps_dir=str(folder),
                                 gps_nodes_path=folder / 'nope.npy')


def test_gps_bad_asset_contents(gps_dir):
    folder, (arrays, nodes, eigvals) = gps_dir
    # Encoder sizes must match the configuration.
    with pytest.raises(ValueError, match='encoder_width'):
        field_lib.LocalizerField(**dict(GPS_SMALL, encoder_width=2 * GPS_F), gps_dir=folder)
    with pytest.raises(ValueError, match='encoder_hidden'):
        field_lib.LocalizerField(**dict(GPS_SMALL, encoder_hidden=GPS_H + 1), gps_dir=folder)
    with pytest.raises(ValueError, match='fewer than posenc_dim'):
        field_lib.LocalizerField(**dict(GPS_SMALL, posenc_dim=GPS_O + 1), gps_dir=folder)
    with pytest.raises(ValueError, match='even'):
        field_lib.LocalizerField(**dict(GPS_SMALL, encoder_width=GPS_F + 1), gps_dir=folder)
    # posenc_dim = O needs O + 1 eigenvalues (25 here): fine; one fewer is an error.
    field_lib.LocalizerField(**dict(GPS_SMALL, posenc_dim=GPS_O), gps_dir=folder)
    np.save(folder / 'canonical_eigval3.npy', eigvals[:GPS_O])
    with pytest.raises(ValueError, match='canonical_eigval3.npy.*at least'):
        field_lib.LocalizerField(**dict(GPS_SMALL, posenc_dim=GPS_O), gps_dir=folder)
    bad = eigvals.copy()
    bad[3] = 0.0
    np.save(folder / 'canonical_eigval3.npy', bad)
    with pytest.raises(ValueError, match='positive'):
        field_lib.LocalizerField(**GPS_SMALL, gps_dir=folder)
    np.save(folder / 'canonical_eigval3.npy', eigvals)
    flat = nodes.copy()
    flat[:, 2] = 0.1
    np.save(folder / 'canonical_nodes3.npy', flat)
    with pytest.raises(ValueError, match='canonical_nodes3.npy.*zero width'):
        field_lib.LocalizerField(**GPS_SMALL, gps_dir=folder)
    np.save(folder / 'canonical_nodes3.npy', nodes)
    np.savez(folder / 'gps_weights.npz', **{k: v for k, v in arrays.items() if k != 'W_r'})
    with pytest.raises(ValueError, match='gps_weights.npz.*exactly the arrays'):
        field_lib.LocalizerField(**GPS_SMALL, gps_dir=folder)
    # The GPS box comes from the nodes file only.
    with pytest.raises(ValueError, match='vanilla'):
        field_lib.LocalizerField(**GPS_SMALL, gps_dir=folder, canonical_extent=(1, 1, 1))
    with pytest.raises(ValueError, match="field_type='gps' only"):
        field_lib.LocalizerField(**SMALL, gps_dir=folder)


def test_gps_weights_from_arrays_layouts_and_checks(tmp_path):
    arrays = _gps_arrays(seed=3)
    keras_out = field_lib.gps_weights_from_arrays(**arrays)
    torch_arrays = {k: (v.T if v.ndim == 2 else v) for k, v in arrays.items()}
    torch_out = field_lib.gps_weights_from_arrays(**torch_arrays, layout='torch',
                                                  path=str(tmp_path / 'g.npz'))
    for name in field_lib.GPS_WEIGHT_NAMES:
        assert keras_out[name].dtype == np.float32
        np.testing.assert_array_equal(keras_out[name], torch_out[name])
        np.testing.assert_allclose(keras_out[name], arrays[name], rtol=1e-6)
    read = field_lib.read_gps_weights(tmp_path / 'g.npz')
    for name in field_lib.GPS_WEIGHT_NAMES:
        np.testing.assert_array_equal(read[name], keras_out[name])
    # Torch-layout arrays given as Keras layout do not chain.
    with pytest.raises(ValueError):
        field_lib.gps_weights_from_arrays(**torch_arrays)
    with pytest.raises(ValueError, match='dense2_bias'):
        field_lib.gps_weights_from_arrays(**dict(arrays, dense2_bias=np.zeros(GPS_O + 1)))
    with pytest.raises(ValueError, match='W_r'):
        field_lib.gps_weights_from_arrays(**dict(arrays, W_r=np.zeros((4, GPS_F // 2))))
    with pytest.raises(ValueError, match='.npz'):
        field_lib.gps_weights_from_arrays(**arrays, path=str(tmp_path / 'g.h5'))


def test_gps_arrays_from_tf_savedmodel(tmp_path):
    arrays = _gps_arrays(seed=4)
    # A SavedModel with the original's variables (names need not match; shapes identify them).
    module = tf.Module()
    names = {'W_r': ('layer_with_weights-0', 'kernel'),
             'dense1_kernel': ('layer_with_weights-1', 'kernel'),
             'dense1_bias': ('layer_with_weights-1', 'bias'),
             'dense2_kernel': ('layer_with_weights-2', 'kernel'),
             'dense2_bias': ('layer_with_weights-2', 'bias')}
    for name in reversed(field_lib.GPS_WEIGHT_NAMES):
        owner, attr = names[name]
        if not hasattr(module, owner.replace('-', '_')):
            setattr(module, owner.replace('-', '_'), tf.Module())
        setattr(getattr(module, owner.replace('-', '_')), attr,
                tf.Variable(arrays[name].astype(np.float32)))
    tf.saved_model.save(module, str(tmp_path / 'lbo_mlp'))
    read = field_lib.gps_arrays_from_tf_savedmodel(tmp_path / 'lbo_mlp')
    for name in field_lib.GPS_WEIGHT_NAMES:
        np.testing.assert_allclose(read[name], arrays[name], rtol=1e-6)
    with pytest.raises(FileNotFoundError, match='SavedModel'):
        field_lib.gps_arrays_from_tf_savedmodel(tmp_path)


def _encoder_and_head_grads(layer, points):
    points = tf.constant(points)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(points)
        # The tf.Variables under the Keras variables (the tape needs TF objects).
        encoder_vars = [v.value for l in layer.encoder_layers for v in l.weights]
        tape.watch(encoder_vars)
        loss = tf.reduce_sum(tf.square(layer(points)))
    grads = tape.gradient(loss, encoder_vars)
    head_grads = tape.gradient(loss, [v.value for v in layer.output_layer.weights])
    point_grads = tape.gradient(loss, points)
    return grads, head_grads, point_grads


@pytest.mark.parametrize('field_type', ['gps', 'vanilla'])
def test_finetune_off_stops_encoder_gradient(gps_dir, field_type):
    folder, (_, nodes, _) = gps_dir
    points = _points_in_box(nodes, (5,))
    if field_type == 'gps':
        kwargs = dict(GPS_SMALL, gps_dir=str(folder))
    else:
        kwargs = dict(SMALL)
    frozen = field_lib.LocalizerField(**kwargs, finetune_gps=False)
    frozen.build((None, 3))
    encoder_vars = [v for l in frozen.encoder_layers for v in l.weights]
    trainable_ids = {id(v) for v in frozen.trainable_variables}
    assert encoder_vars and not any(id(v) in trainable_ids for v in encoder_vars)
    grads, head_grads, point_grads = _encoder_and_head_grads(frozen, points)
    assert all(g is None for g in grads)
    assert point_grads is None
    assert all(g is not None and np.any(g.numpy() != 0) for g in head_grads)

    tuned = field_lib.LocalizerField(**kwargs, finetune_gps=True)
    tuned.build((None, 3))
    trainable_ids = {id(v) for v in tuned.trainable_variables}
    assert all(id(v) in trainable_ids
               for l in tuned.encoder_layers for v in l.weights)
    grads, _, point_grads = _encoder_and_head_grads(tuned, points)
    assert all(g is not None and np.any(g.numpy() != 0) for g in grads)
    assert point_grads is not None
    if field_type == 'gps':
        # Box and eigenvalue scales are never trained.
        gps_vars = {id(v) for v in (tuned.gps_box_center, tuned.gps_box_extent,
                                    tuned.gps_eigval_scales)}
        assert not gps_vars & trainable_ids


def test_gps_regularizer_on_first_hidden_layer(gps_dir):
    folder, _ = gps_dir
    layer = field_lib.LocalizerField(**dict(GPS_SMALL, eigval_regul=2e-3), gps_dir=folder)
    layer.build((None, 3))
    _randomize_head(layer)
    assert len(layer.losses) == 1
    kernel = layer.hidden_dense[0].kernel.numpy().astype(np.float64)
    assert kernel.shape[0] == GPS_K
    np.testing.assert_allclose(float(layer.losses[0]), 2e-3 * np.sum(kernel ** 2) / GPS_K,
                               rtol=1e-5)


def test_gps_config_is_small_and_checkpoint_carries_assets(gps_dir, tmp_path_factory):
    folder, (_, nodes, _) = gps_dir
    layer = field_lib.LocalizerField(**GPS_SMALL, gps_dir=str(folder))
    layer.build((None, 3))
    _randomize_head(layer, seed=9)
    points = _points_in_box(nodes, (2, 4))
    expected = layer(points).numpy()

    config = layer.get_config()
    text = json.dumps(config)
    assert len(text) < 2000 and str(folder) not in text
    assert config['gps_from_checkpoint'] is True and config['finetune_gps'] is True

    # Rebuilt from the config without any file: NaN until the weights are restored.
    clone = field_lib.LocalizerField.from_config(config)
    clone.build((None, 3))
    assert np.all(np.isnan(clone(points).numpy()))
    ckpt_dir = tmp_path_factory.mktemp('ckpt')
    path = tf.train.Checkpoint(field=layer).save(str(ckpt_dir / 'ckpt'))
    tf.train.Checkpoint(field=clone).restore(path).assert_existing_objects_matched()
    np.testing.assert_array_equal(clone(points).numpy(), expected)

    # Keras weight files carry them too.
    clone2 = field_lib.LocalizerField.from_config(config)
    clone2.build((None, 3))
    clone2.set_weights(layer.get_weights())
    np.testing.assert_array_equal(clone2(points).numpy(), expected)

    with pytest.raises(ValueError, match='gps_from_checkpoint'):
        field_lib.LocalizerField(**GPS_SMALL, gps_dir=str(folder), gps_from_checkpoint=True)


def test_gps_mixed_float16(gps_dir, mixed_policy):
    folder, (arrays, nodes, eigvals) = gps_dir
    layer = field_lib.LocalizerField(**GPS_SMALL, gps_dir=str(folder))
    layer.build((None, 3))
    assert all(v.dtype == 'float32' for v in layer.weights)
    points = _points_in_box(nodes, (3, 4))
    encoding = layer.positional_encoding(points)
    assert encoding.dtype == tf.float16
    reference = _numpy_gps_encoding(arrays, nodes, eigvals, points.astype(np.float64))
    # float16 Fourier arguments (|y| up to ~20) limit the accuracy.
    np.testing.assert_allclose(encoding.numpy().astype(np.float64), reference, atol=2e-2)
    out = layer(points)
    assert out.dtype == tf.float16 and np.all(np.isfinite(out.numpy()))
