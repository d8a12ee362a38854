import keras
import numpy as np
import pytest
import tensorflow as tf

from nlf_tf import config as config_lib
from nlf_tf import reconstruction
from nlf_tf.model import NLFModel, model_settings, normalization

NAMES = ['pelv', 'lhip', 'rhip', 'neck', 'lknee', 'rknee', 'lthumb', 'rthumb']
INIT = np.random.RandomState(0).uniform(-0.5, 0.5, (len(NAMES), 3)).astype(np.float32)
SMALL = dict(proc_side=64, backbone='mobilenetv3small', backbone_link_dim=16,
             field_posenc_dim=16, field_hidden_size=16, depth=4)


def _cfg(**overrides):
    return config_lib.default_config(**dict(SMALL, **overrides))


def _inputs(batch=2, n_points=6, seed=0):
    rng = np.random.RandomState(seed)
    intrinsics = np.tile(np.array([[[80.0, 0, 32], [0, 80, 32], [0, 0, 1]]], np.float32),
                         [batch, 1, 1])
    return dict(image=rng.uniform(size=(batch, 64, 64, 3)).astype(np.float32),
                intrinsics=intrinsics,
                canonical_points=rng.normal(0, 0.4, (batch, n_points, 3)).astype(np.float32))


def _randomize_field(model, seed=0):
    rng = np.random.RandomState(seed)
    field = model.field
    field.set_weights([
        rng.normal(0, 1 / np.sqrt(w.shape[0]) if w.ndim == 2 else 0.1, w.shape).astype(
            np.float32) for w in field.get_weights()])


def test_structure_and_interface():
    model = NLFModel(_cfg(), NAMES, INIT)
    assert model.field is model.heatmap_head.field
    assert model.joint_names == tuple(NAMES)
    np.testing.assert_array_equal(model.canonical_locs().numpy(), INIT)
    # Everything exists right after construction (the optimizer can be built from it).
    names = [v.name for v in model.trainable_variables]
    assert 'canonical_lefts' in names and 'canonical_centers' in names
    field_ids = {id(v) for v in model.field.trainable_variables}
    assert field_ids and field_ids <= {id(v) for v in model.trainable_variables}
    assert len(model.losses) == 1  # the field regulariser
    features = model.backbone(tf.zeros([2, 64, 64, 3]), training=False)
    assert tuple(features.shape) == (2, 2, 2, 576)
    head2d, head3d, uncert = model.heatmap_head(
        features, tf.zeros([2, 5, 3]), training=True)
    assert head2d.shape == (2, 5, 2) and head3d.shape == (2, 5, 3) and uncert.shape == (2, 5)

    frozen = NLFModel(_cfg(trainable_canonical_joints=False), NAMES, INIT)
    assert 'canonical_lefts' not in [v.name for v in frozen.trainable_variables]


def test_inference_outputs_match_parts():
    model = NLFModel(_cfg(), NAMES, INIT)
    _randomize_field(model)
    inputs = _inputs()
    out = model(inputs, training=False)
    assert set(out) == {'coords2d', 'coords3d_rel', 'uncertainty', 'coords3d'}
    for value in out.values():
        assert value.dtype == tf.float32
        assert np.all(np.isfinite(value.numpy()))

    features = model.backbone(inputs['image'], training=False)
    head2d, head3d, uncert = model.heatmap_head(
        features, inputs['canonical_points'], training=False)
    np.testing.assert_allclose(out['coords2d'].numpy(), head2d.numpy(), rtol=1e-6)
    np.testing.assert_allclose(out['coords3d_rel'].numpy(), head3d.numpy(), rtol=1e-6)
    np.testing.assert_allclose(out['uncertainty'].numpy(), 3 * uncert.numpy(), rtol=1e-6)
    assert out['uncertainty'].numpy().min() > 3 * 0.001
    coords2d = out['coords2d'].numpy()
    assert coords2d.min() >= 16 and coords2d.max() <= 48

    want = reconstruction.reconstruct_absolute(
        head2d, head3d, inputs['intrinsics'], mix_3d_inside_fov=0.5, weak_perspective=False,
        point_validity_mask=uncert < 0.3, border_factor1=1, border_factor2=0.6,
        mix_based_on_3d=True, proc_side=64, stride=32, centered_stride=True,
        fullpersp_l2_regul=1e-4, min_depth=0.001)
    np.testing.assert_allclose(out['coords3d'].numpy(), want.numpy(), rtol=1e-5, atol=1e-5)


def test_inference_settings_are_used():
    inputs = _inputs(seed=1)
    model = NLFModel(_cfg(fix_uncert_factor=True, nll_loss=False, weak_perspective=True,
                          mix_3d_inside_fov=1.0), NAMES, INIT)
    _randomize_field(model, seed=1)
    out = model(inputs, training=False)
    features = model.backbone(inputs['image'], training=False)
    head2d, head3d, uncert = model.heatmap_head(
        features, inputs['canonical_points'], training=False)
    np.testing.assert_allclose(out['uncertainty'].numpy(), uncert.numpy(), rtol=1e-6)
    want = reconstruction.reconstruct_absolute(
        head2d, head3d, inputs['intrinsics'], mix_3d_inside_fov=1.0, weak_perspective=True,
        point_validity_mask=None, border_factor1=1, border_factor2=0.6, proc_side=64,
        stride=32)
    np.testing.assert_allclose(out['coords3d'].numpy(), want.numpy(), rtol=1e-5, atol=1e-5)
    # mix = 1: the output is the relative prediction plus one translation per example.
    offsets = out['coords3d'].numpy() - head3d.numpy()
    np.testing.assert_allclose(offsets, np.broadcast_to(offsets[:, :1], offsets.shape),
                               atol=1e-4)


def test_gradients_reach_all_parts():
    model = NLFModel(_cfg(), NAMES, INIT)
    inputs = _inputs()
    with tf.GradientTape() as tape:
        features = model.backbone(inputs['image'], training=True)
        points = tf.concat([inputs['canonical_points'][:, :4],
                            tf.tile(model.canonical_locs()[tf.newaxis, :2], [2, 1, 1])], axis=1)
        head2d, head3d, uncert = model.heatmap_head(features, points, training=True)
        loss = (tf.reduce_sum(head3d * [1.0, 2.0, 3.0]) + tf.reduce_sum(head2d[..., 0])
                + tf.reduce_sum(tf.math.log(uncert)) + tf.add_n(model.losses))
    variables = [model.canonical_joints.canonical_lefts,
                 model.heatmap_head.link_conv.kernel,
                 model.field.output_layer.kernel,
                 model.backbone.trainable_variables[0]]
    for grad in tape.gradient(loss, variables):
        assert grad is not None
        assert isinstance(grad, tf.Tensor)
        assert np.any(grad.numpy() != 0)


def test_momentum_adjustment_for_grad_accum():
    model = NLFModel(_cfg(grad_accum_steps=2), NAMES, INIT)
    assert model.heatmap_head.link_norm.momentum == pytest.approx(0.9 ** 0.5)
    backbone_bn = [layer for layer in model.backbone._flatten_layers()
                   if isinstance(layer, (keras.layers.BatchNormalization,
                                         normalization.BatchRenormalization))]
    assert backbone_bn and all(
        layer.momentum == pytest.approx(0.999 ** 0.5) for layer in backbone_bn)


def test_get_config_round_trip():
    cfg = _cfg(uncert_bias=0.2, box_size_m=2.0, trainable_canonical_joints=False)
    model = NLFModel(cfg, NAMES, INIT, name='nlf')
    _randomize_field(model, seed=2)
    model.canonical_joints.canonical_lefts.assign(
        np.full(model.canonical_joints.canonical_lefts.shape, 0.01, np.float32))
    config = model.get_config()
    assert config['cfg'] == model_settings(cfg)
    assert config['joint_names'] == NAMES
    clone = NLFModel.from_config(config)
    assert clone.get_config() == config
    clone.set_weights(model.get_weights())
    inputs = _inputs(seed=2)
    a = model(inputs, training=False)
    b = clone(inputs, training=False)
    for key in a:
        np.testing.assert_array_equal(a[key].numpy(), b[key].numpy())
    np.testing.assert_array_equal(clone.canonical_locs().numpy(), model.canonical_locs().numpy())

    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    assert isinstance(revived, NLFModel) and revived.get_config() == config


def test_bad_settings():
    with pytest.raises(ValueError, match='backbone'):
        NLFModel(_cfg(backbone='alexnet'), NAMES, INIT)
    with pytest.raises(ValueError, match='field_type'):
        NLFModel(_cfg(field_type='gps'), NAMES, INIT)
    with pytest.raises(KeyError, match='image'):
        NLFModel(_cfg(), NAMES, INIT)({'intrinsics': None, 'canonical_points': None})


def test_mixed_float16(mixed_policy):
    model = NLFModel(_cfg(backbone='efficientnetv2-b0'), NAMES, INIT)
    assert all(v.dtype in ('float32', 'int32', 'int64') for v in model.weights)
    inputs = _inputs()
    features = model.backbone(inputs['image'], training=False)
    assert features.dtype == tf.float16
    assert model.field(inputs['canonical_points']).dtype == tf.float16
    assert model.canonical_locs().dtype == tf.float32
    for training in (False, True):
        out = model(inputs, training=training)
        for value in out.values():
            assert value.dtype == tf.float32
            assert np.all(np.isfinite(value.numpy()))
    assert model.losses[0].dtype == tf.float32


def test_checkpoint_round_trip(tmp_path):
    """Every variable (also the field's hidden layers and the canonical deltas) is restored by
    tf.train.Checkpoint and by Keras weight files."""
    cfg = _cfg(field_hidden_layers=2)
    model = NLFModel(cfg, NAMES, INIT)
    _randomize_field(model, seed=3)
    model.canonical_joints.canonical_centers.assign(
        np.full(model.canonical_joints.canonical_centers.shape, 0.02, np.float32))
    path = tf.train.Checkpoint(model=model).save(str(tmp_path / 'ckpt'))
    model.save_weights(str(tmp_path / 'model.weights.h5'))

    restored = NLFModel(cfg, NAMES, INIT)
    tf.train.Checkpoint(model=restored).restore(path).assert_consumed()
    loaded = NLFModel(cfg, NAMES, INIT)
    loaded.load_weights(str(tmp_path / 'model.weights.h5'))
    for other in (restored, loaded):
        assert len(other.weights) == len(model.weights)
        for a, b in zip(model.weights, other.weights):
            assert a.path == b.path
            np.testing.assert_array_equal(a.numpy(), b.numpy())


def _write_gps_assets(folder, posenc_dim=16, fourier=512, hidden=2048):
    # The model builds the GPS encoder with NLF's sizes (512 Fourier features, 2048 hidden).
    from nlf_tf.model import field as field_lib
    rng = np.random.RandomState(5)
    folder.mkdir()
    field_lib.gps_weights_from_arrays(
        W_r=rng.normal(0, 2, (3, fourier // 2)), dense1_kernel=rng.normal(0, 0.3, (fourier, hidden)),
        dense1_bias=rng.normal(0, 0.1, hidden),
        dense2_kernel=rng.normal(0, 0.3, (hidden, posenc_dim + 4)),
        dense2_bias=rng.normal(0, 0.1, posenc_dim + 4),
        path=str(folder / field_lib.GPS_WEIGHTS_FILE))
    np.save(folder / field_lib.GPS_NODES_FILE, rng.uniform(-1, 1, (50, 3)))
    np.save(folder / field_lib.GPS_EIGVAL_FILE, np.concatenate([[0.0], np.linspace(1, 9, 20)]))


def test_gps_field_model_reloads_without_the_asset_files(tmp_path):
    assets = tmp_path / 'gps'
    _write_gps_assets(assets)
    cfg = _cfg(field_type='gps', field_gps_dir=str(assets))
    model = NLFModel(cfg, NAMES, INIT)
    inputs = _inputs(seed=4)
    expected = model(inputs, training=False)
    config = model.get_config()
    assert config['cfg']['field_gps_dir'] is None and config['gps_from_checkpoint']
    clone = NLFModel.from_config(config)  # no files needed
    clone.set_weights(model.get_weights())
    got = clone(inputs, training=False)
    for key in expected:
        np.testing.assert_allclose(got[key].numpy(), expected[key].numpy(), atol=1e-6)


def test_gps_field_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match='field_gps_dir'):
        NLFModel(_cfg(field_type='gps', field_gps_dir=str(tmp_path / 'nowhere')), NAMES, INIT)


@pytest.mark.parametrize('overrides, kind', [
    (dict(), normalization.BatchRenormalization),
    (dict(batch_renorm=False), keras.layers.BatchNormalization),
    (dict(ghost_bn='1,1'), normalization.GhostBatchNormalization)])
def test_normalizer_choice(overrides, kind):
    # (GroupNorm(32) needs >= 32 channels everywhere, which MobileNetV3 does not have.)
    model = NLFModel(_cfg(backbone_link_dim=32, **overrides), NAMES, INIT)
    assert isinstance(model.heatmap_head.link_norm, kind)
    backbone_kinds = {type(layer) for layer in model.backbone._flatten_layers()
                      if 'normalization' in type(layer).__name__.lower()}
    assert backbone_kinds == {kind}
    if kind is normalization.BatchRenormalization:
        # Every renorm layer shares the model's one set of clipping limits.
        model.renorm_clipping.update(17500)
        layers = [l for l in model.backbone._flatten_layers() if isinstance(l, kind)]
        layers.append(model.heatmap_head.link_norm)
        assert all(l.renorm_clipping is model.renorm_clipping for l in layers)
        np.testing.assert_allclose(
            [v.numpy() for v in model.renorm_clipping.values()], [3, 1 / 3, 5], rtol=1e-6)
    out = model(_inputs(), training=True)
    assert np.isfinite(out['coords3d'].numpy()).all()
