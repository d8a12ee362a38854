"""Tests for nlf_tf.body_models.tf_model.BodyModel against the NumPy reference."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from nlf_tf.body_models import files, kinds, numpy_model, tf_model
from test_body_models_files import model_arrays, write_kid_template, write_model

FAMILIES = ('smpl', 'smplh', 'smplx')
GENDER = {'smpl': 'm', 'smplh': 'f', 'smplx': 'n'}


@pytest.fixture(autouse=True)
def _fresh_cache():
    files.clear_cache()
    yield
    files.clear_cache()


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
    """One folder with a tiny model of every family (+ kid templates for SMPL and SMPL-X)."""
    d = tmp_path_factory.mktemp('body_models')
    for i, family in enumerate(FAMILIES):
        arrays = model_arrays(family, seed=10 + i, posedir_scale=0.05)
        write_model(str(d), family, GENDER[family], arrays)
        if family != 'smplh':
            rng = np.random.default_rng(i)
            kid = 0.7 * arrays['v_template'] + rng.normal(0, 0.01, arrays['v_template'].shape)
            write_kid_template(str(d), family, kid + 0.3)
    return str(d)


def _inputs(rng, n, family, num_shape=12):
    n_joints = kinds.NUM_JOINTS[family]
    pose = rng.normal(0, 0.6, [n, 3 * n_joints])
    pose[0, :9] = 0  # exact zero rotations (root and first joints) must work too
    return dict(pose=pose, shape=rng.normal(size=[n, num_shape]),
                expression=rng.normal(size=[n, 10]),
                kid_factor=rng.uniform(0, 1, n) * (family != 'smplh'),
                trans=rng.normal(size=[n, 3]))


def _numpy_reference(model_dict, inputs, num_betas=None):
    betas = inputs['shape'] if num_betas is None else inputs['shape'][:, :num_betas]
    return numpy_model.forward(model_dict, inputs['pose'], betas, inputs['expression'],
                               inputs['kid_factor'], inputs['trans'])


@pytest.mark.parametrize('family', FAMILIES)
def test_matches_numpy_reference(model_dir, family):
    layer = tf_model.BodyModel.from_dir(model_dir, family, GENDER[family])
    model_dict = files.load_body_model(model_dir, family, GENDER[family])
    inputs = _inputs(np.random.default_rng(0), 4, family)
    out = layer(**{k: tf.constant(v, tf.float32) for k, v in inputs.items()})
    assert out['vertices'].dtype == tf.float32 and out['joints'].dtype == tf.float32
    n_verts = model_dict['num_vertices']
    assert out['vertices'].shape == (4, n_verts, 3)
    assert out['joints'].shape == (4, kinds.NUM_JOINTS[family], 3)
    vertices, joints = _numpy_reference(model_dict, inputs)
    np.testing.assert_allclose(out['vertices'].numpy(), vertices, atol=2e-5)
    np.testing.assert_allclose(out['joints'].numpy(), joints, atol=2e-5)
    # The shape is really exercised (reference without it differs a lot).
    no_shape = numpy_model.forward(model_dict, inputs['pose'], trans=inputs['trans'],
                                   expression=inputs['expression'],
                                   kid_factor=inputs['kid_factor'])[0]
    assert np.abs(no_shape - vertices).max() > 1e-2


def test_padded_pose_truncated_shape_and_optional_inputs(model_dir):
    layer = tf_model.BodyModel(model_dir, 'smpl', 'male', num_betas=4)
    model_dict = files.load_body_model(model_dir, 'smpl', 'm')
    rng = np.random.default_rng(1)
    inputs = _inputs(rng, 3, 'smpl')
    padded = np.concatenate([inputs['pose'], rng.normal(size=[3, 165 - 72])], axis=1)
    out = layer(tf.constant(padded, tf.float32), tf.constant(inputs['shape'], tf.float32),
                tf.constant(inputs['expression'], tf.float32),  # SMPL: no expression
                tf.constant(inputs['kid_factor'], tf.float32),
                tf.constant(inputs['trans'], tf.float32))
    vertices, joints = _numpy_reference(model_dict, inputs, num_betas=4)
    np.testing.assert_allclose(out['vertices'].numpy(), vertices, atol=2e-5)
    np.testing.assert_allclose(out['joints'].numpy(), joints, atol=2e-5)

    # Pose only; two betas (zero-padded to 4).
    out = layer(tf.constant(inputs['pose'], tf.float32),
                shape=tf.constant(inputs['shape'][:, :2], tf.float32))
    vertices, joints = numpy_model.forward(model_dict, inputs['pose'], inputs['shape'][:, :2])
    np.testing.assert_allclose(out['vertices'].numpy(), vertices, atol=2e-5)
    np.testing.assert_allclose(out['joints'].numpy(), joints, atol=2e-5)


def test_zero_pose_gives_template_and_kid_factor(model_dir):
    layer = tf_model.BodyModel(model_dir, 'smplx', 'neutral')
    model_dict = files.load_body_model(model_dir, 'smplx', 'n')
    out = layer(tf.zeros([2, 165]), kid_factor=tf.constant([0.0, 1.0]))
    np.testing.assert_allclose(out['vertices'][0].numpy(), model_dict['v_template'], atol=1e-6)
    kid = np.load(model_dict['kid_template_path'])
    np.testing.assert_allclose(out['vertices'][1].numpy(), kid - kid.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(out['joints'][1].numpy(),
                               model_dict['J_regressor'] @ (kid - kid.mean(axis=0)), atol=1e-5)


def test_rotvec_to_matrix_value_and_gradient_at_zero():
    rotvecs = tf.constant([[0.0, 0.0, 0.0], [1e-4, -2e-4, 3e-4], [0.3, -1.2, 2.0],
                           [np.pi, 0.0, 0.0]])
    from scipy.spatial.transform import Rotation
    np.testing.assert_allclose(tf_model.rotvec_to_matrix(rotvecs).numpy(),
                               Rotation.from_rotvec(rotvecs.numpy()).as_matrix(), atol=1e-6)
    # d R / d r_x at r = 0 is the generator of rotations about x.
    zero = tf.zeros([3])
    with tf.GradientTape() as tape:
        tape.watch(zero)
        rot = tf_model.rotvec_to_matrix(zero)
        target = tf.constant([[0.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 2.0, 0.0]])
        loss = tf.reduce_sum(rot * target)
    np.testing.assert_allclose(tape.gradient(loss, zero).numpy(), [3.0, 0.0, 0.0], atol=1e-6)


def test_gradients_wrt_pose_and_shape(model_dir):
    layer = tf_model.BodyModel(model_dir, 'smplh', 'female')
    model_dict = files.load_body_model(model_dir, 'smplh', 'f')
    rng = np.random.default_rng(2)
    pose = rng.normal(0, 0.5, [2, 156])
    pose[:, 60:] = 0  # includes joints at exactly zero rotation
    betas = rng.normal(size=[2, 16])
    pose_t = tf.constant(pose, tf.float32)
    betas_t = tf.constant(betas, tf.float32)
    weights = rng.normal(size=[model_dict['num_vertices'], 3])

    def loss_np(p, b):
        return float(np.sum(numpy_model.forward(model_dict, p, b)[0] * weights))

    with tf.GradientTape() as tape:
        tape.watch([pose_t, betas_t])
        out = layer(pose_t, betas_t)
        loss = tf.reduce_sum(out['vertices'] * weights) + tf.reduce_sum(out['joints'])
    grad_pose, grad_shape = tape.gradient(loss, [pose_t, betas_t])
    assert np.all(np.isfinite(grad_pose.numpy())) and np.all(np.isfinite(grad_shape.numpy()))
    assert np.abs(grad_pose.numpy()).max() > 0 and np.abs(grad_shape.numpy()).max() > 0

    # Compare d(sum(vertices * weights)) with central differences of the float64 reference,
    # for a nonzero and a zero-rotation pose coordinate and one beta.
    with tf.GradientTape() as tape:
        tape.watch([pose_t, betas_t])
        loss = tf.reduce_sum(layer(pose_t, betas_t)['vertices'] * weights)
    grad_pose, grad_shape = tape.gradient(loss, [pose_t, betas_t])
    eps = 1e-6
    for index in (5, 70):
        step = np.zeros_like(pose)
        step[1, index] = eps
        numeric = (loss_np(pose + step, betas) - loss_np(pose - step, betas)) / (2 * eps)
        np.testing.assert_allclose(grad_pose[1, index].numpy(), numeric, rtol=1e-3, atol=1e-4)
    step = np.zeros_like(betas)
    step[0, 3] = eps
    numeric = (loss_np(pose, betas + step) - loss_np(pose, betas - step)) / (2 * eps)
    np.testing.assert_allclose(grad_shape[0, 3].numpy(), numeric, rtol=1e-3, atol=1e-4)


def test_empty_batch_and_xla(model_dir):
    layer = tf_model.BodyModel(model_dir, 'smplx', 'n')
    model_dict = files.load_body_model(model_dir, 'smplx', 'n')
    out = layer(tf.zeros([0, 165]), tf.zeros([0, 10]))
    assert out['vertices'].shape == (0, model_dict['num_vertices'], 3)
    assert out['joints'].shape == (0, 55, 3)

    @tf.function(jit_compile=True, input_signature=[
        tf.TensorSpec([None, 165]), tf.TensorSpec([None, 20]), tf.TensorSpec([None, 10]),
        tf.TensorSpec([None]), tf.TensorSpec([None, 3])])
    def run(pose, shape, expression, kid_factor, trans):
        return layer(pose, shape, expression, kid_factor, trans)

    inputs = _inputs(np.random.default_rng(3), 3, 'smplx', num_shape=20)
    out = run(**{k: tf.constant(v, tf.float32) for k, v in inputs.items()})
    vertices, joints = _numpy_reference(model_dict, inputs)
    np.testing.assert_allclose(out['vertices'].numpy(), vertices, atol=2e-5)
    np.testing.assert_allclose(out['joints'].numpy(), joints, atol=2e-5)
    empty = run(*[tf.zeros([0] + list(s.shape[1:])) for s in run.input_signature])
    assert empty['vertices'].shape == (0, model_dict['num_vertices'], 3)


def test_dynamic_shape_width_in_graph(model_dir):
    layer = tf_model.BodyModel(model_dir, 'smpl', 'm', num_betas=6)
    model_dict = files.load_body_model(model_dir, 'smpl', 'm')

    @tf.function(input_signature=[tf.TensorSpec([None, None]), tf.TensorSpec([None, None])])
    def run(pose, shape):
        return layer(pose, shape)['vertices']

    rng = np.random.default_rng(4)
    pose = rng.normal(0, 0.5, [2, 72])
    for width in (3, 9):
        betas = rng.normal(size=[2, width])
        expected = numpy_model.forward(model_dict, pose, betas[:, :6])[0]
        np.testing.assert_allclose(run(tf.constant(pose, tf.float32),
                                       tf.constant(betas, tf.float32)).numpy(),
                                   expected, atol=2e-5)


def test_config_roundtrip_and_float32_under_mixed_policy(model_dir, mixed_policy):
    layer = tf_model.BodyModel(model_dir, 'smplx', 'neutral', num_betas=5, name='smplx_n')
    config = layer.get_config()
    assert config['family'] == 'smplx' and config['gender'] == 'neutral'
    assert config['num_betas'] == 5 and config['body_model_dir'] == model_dir
    clone = tf_model.BodyModel.from_config(config)
    assert clone.name == 'smplx_n' and clone.num_shape == 5
    assert not layer.trainable_weights and not layer.weights
    inputs = _inputs(np.random.default_rng(5), 2, 'smplx')
    tensors = {k: tf.constant(v, tf.float32) for k, v in inputs.items()}
    a, b = layer(**tensors), clone(**tensors)
    assert a['vertices'].dtype == tf.float32
    np.testing.assert_array_equal(a['vertices'].numpy(), b['vertices'].numpy())
    # Works inside a functional Keras model too.
    pose_in = keras.Input([165])
    shape_in = keras.Input([10])
    model = keras.Model([pose_in, shape_in], layer(pose_in, shape_in)['joints'])
    np.testing.assert_allclose(model([tensors['pose'], tensors['shape'][:, :10]]).numpy(),
                               layer(tensors['pose'], tensors['shape'][:, :10])['joints'].numpy(),
                               atol=1e-6)


def test_missing_model_file_error(tmp_path):
    with pytest.raises(files.ModelFileError, match='--body_model_dir expects smplh/SMPLH_MALE'):
        tf_model.BodyModel(str(tmp_path), 'smplh', 'male')
