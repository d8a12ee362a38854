import keras
import numpy as np
import pytest
import tensorflow as tf

from nlf_tf.model import canonical as canonical_lib

NAMES = ['pelv', 'lhip', 'rhip', 'neck', 'lknee', 'rknee', 'lowerback', 'rthumb3_x',
         'lthumb3_x', 'lhand', 'rhand', 'lhan', 'head_top', 'rear_only']
INIT = np.random.RandomState(0).uniform(-0.8, 0.8, (len(NAMES), 3)).astype(np.float32)
IDX = {n: i for i, n in enumerate(NAMES)}


def test_hand_joint_rule():
    hand = canonical_lib.is_hand_joint
    assert hand('lthumb3_x') and hand('rpinky1') and hand('lindex') and hand('rmiddle_tip')
    assert hand('lring_2') and hand('lhand') and hand('rhandtip_coco')
    assert not hand('lhan') and not hand('lhan_mpi')  # 'lhan…' needs more than 4 characters
    assert not hand('lwri') and not hand('neck') and not hand('lsho_ring')  # first token only


def test_joint_classification():
    i_left, i_right, i_center = canonical_lib.split_joints(NAMES)
    assert [NAMES[i] for i in i_left] == ['lhip', 'lknee', 'lthumb3_x', 'lhand']
    assert [NAMES[i] for i in i_right] == ['rhip', 'rknee', 'rthumb3_x', 'rhand']
    # 'lowerback' and 'lhan' have no 'r' partner; 'rear_only' no 'l' partner: centre joints.
    assert [NAMES[i] for i in i_center] == [
        'pelv', 'neck', 'lowerback', 'lhan', 'head_top', 'rear_only']


def test_variables():
    layer = canonical_lib.CanonicalJoints(NAMES, INIT)
    lefts, centers = layer.canonical_lefts, layer.canonical_centers
    assert lefts.name == 'canonical_lefts' and centers.name == 'canonical_centers'
    assert tuple(lefts.shape) == (4, 3) and tuple(centers.shape) == (6, 2)
    assert lefts.dtype == centers.dtype == 'float32'
    assert lefts.trainable and centers.trainable
    assert np.all(lefts.numpy() == 0) and np.all(centers.numpy() == 0)
    assert {v.name for v in layer.trainable_variables} == {'canonical_lefts', 'canonical_centers'}
    np.testing.assert_array_equal(layer.canonical_locs().numpy(), INIT)
    np.testing.assert_array_equal(layer().numpy(), INIT)

    frozen = canonical_lib.CanonicalJoints(NAMES, INIT, trainable=False)
    assert not frozen.trainable_variables
    assert len(frozen.non_trainable_variables) == 2


def test_symmetric_offsets_case39():
    layer = canonical_lib.CanonicalJoints(NAMES, INIT)
    lefts = np.zeros([4, 3], np.float32)
    lefts[0] = [0.05, 0.01, 0.0]  # lhip
    lefts[3] = [0.05, 0.01, 0.02]  # lhand: a hand joint, masked
    lefts[2] = [0.03, 0.0, 0.0]  # lthumb3_x: hand
    layer.canonical_lefts.assign(lefts)
    centers = np.zeros([6, 2], np.float32)
    centers[1] = [0.02, -0.03]  # neck (y, z)
    centers[3] = [0.04, 0.0]  # 'lhan': a centre joint, not a hand joint
    layer.canonical_centers.assign(centers)

    delta = layer.canonical_locs().numpy() - INIT
    np.testing.assert_allclose(delta[IDX['lhip']], [0.05, 0.01, 0.0], atol=1e-7)
    np.testing.assert_allclose(delta[IDX['rhip']], [-0.05, 0.01, 0.0], atol=1e-7)
    np.testing.assert_allclose(delta[IDX['neck']], [0.0, 0.02, -0.03], atol=1e-7)
    np.testing.assert_allclose(delta[IDX['lhan']], [0.0, 0.04, 0.0], atol=1e-7)
    for name in ('lhand', 'rhand', 'lthumb3_x', 'rthumb3_x'):
        np.testing.assert_array_equal(delta[IDX[name]], 0)
    for name in ('lknee', 'rknee', 'pelv', 'lowerback', 'head_top', 'rear_only'):
        np.testing.assert_allclose(delta[IDX[name]], 0, atol=1e-7)

    # Random offsets: centre x always the initial x; rights mirror lefts.
    rng = np.random.RandomState(1)
    layer.canonical_lefts.assign(rng.uniform(-0.04, 0.04, [4, 3]).astype(np.float32))
    layer.canonical_centers.assign(rng.uniform(-0.04, 0.04, [6, 2]).astype(np.float32))
    locs = layer.canonical_locs().numpy()
    for name in ('pelv', 'neck', 'lowerback', 'lhan', 'head_top', 'rear_only'):
        assert locs[IDX[name], 0] == INIT[IDX[name], 0]
    d = locs - INIT
    np.testing.assert_allclose(d[IDX['rknee']], d[IDX['lknee']] * [-1, 1, 1], atol=1e-7)


def test_gradient_is_mirrored():
    layer = canonical_lib.CanonicalJoints(NAMES, INIT)
    with tf.GradientTape() as tape:
        locs = layer.canonical_locs()
        target = locs[IDX['rhip'], 0] + 2 * locs[IDX['lhip'], 1] + locs[IDX['rhand'], 0]
    grad_lefts, grad_centers = tape.gradient(target, [layer.canonical_lefts,
                                                      layer.canonical_centers])
    want = np.zeros([4, 3])
    want[0] = [-1, 2, 0]  # hands contribute nothing
    np.testing.assert_array_equal(grad_lefts.numpy(), want)
    np.testing.assert_array_equal(grad_centers.numpy(), 0)


@pytest.mark.parametrize('optimizer_class', [keras.optimizers.SGD, keras.optimizers.Adam])
def test_constraint_after_optimizer_step_case39(optimizer_class):
    layer = canonical_lib.CanonicalJoints(NAMES, INIT)
    layer.canonical_lefts.assign(np.full([4, 3], 0.01, np.float32))
    layer.canonical_centers.assign(np.full([6, 2], 0.01, np.float32))
    optimizer = optimizer_class(learning_rate=0.09 if optimizer_class is keras.optimizers.Adam
                                else 1.0)
    grad_lefts = np.zeros([4, 3], np.float32)
    # lknee (0.01, 0.01, 0.01) -> (0.1, 0.01, 0.01), norm > 0.07 (SGD with LR 1; the first Adam
    # step moves each component with a non-zero gradient by LR·sign).
    grad_lefts[1] = [-0.09, 0, 0]
    grad_centers = np.zeros([6, 2], np.float32)
    grad_centers[0] = [-0.09, 0]
    optimizer.apply_gradients([(tf.constant(grad_lefts), layer.canonical_lefts),
                               (tf.constant(grad_centers), layer.canonical_centers)])
    lefts = layer.canonical_lefts.numpy()
    centers = layer.canonical_centers.numpy()
    assert np.linalg.norm(lefts[1]) == pytest.approx(0.07, rel=1e-5)
    assert np.linalg.norm(centers[0]) == pytest.approx(0.07, rel=1e-5)
    # Direction kept, only the length changed.
    unconstrained = np.array([0.1, 0.01, 0.01])
    np.testing.assert_allclose(lefts[1] / np.linalg.norm(lefts[1]),
                               unconstrained / np.linalg.norm(unconstrained), atol=1e-5)
    # Rows within the bound are untouched by the constraint.
    np.testing.assert_allclose(lefts[0], 0.01, rtol=1e-5)
    np.testing.assert_allclose(centers[1:], 0.01, rtol=1e-5)


def test_direct_constraint_projects_norm_01_to_007():
    layer = canonical_lib.CanonicalJoints(NAMES, INIT)
    rows = np.array([[0.06, 0.08, 0.0], [0.01, 0.0, 0.0]], np.float32)  # norms 0.1 and 0.01
    projected = layer.canonical_lefts.constraint(tf.constant(rows)).numpy()
    np.testing.assert_allclose(projected[0], rows[0] * 0.7, rtol=1e-5)
    np.testing.assert_allclose(projected[1], rows[1], rtol=1e-5)


def test_float32_under_mixed_policy(mixed_policy):
    layer = canonical_lib.CanonicalJoints(NAMES, INIT)
    assert layer.canonical_locs().dtype == tf.float32
    assert layer().dtype == tf.float32
    np.testing.assert_array_equal(layer().numpy(), INIT)


def test_get_config_round_trip():
    layer = canonical_lib.CanonicalJoints(NAMES, INIT, trainable=False)
    layer.canonical_lefts.assign(np.full([4, 3], 0.02, np.float32))
    config = layer.get_config()
    assert config['joint_names'] == NAMES
    assert isinstance(config['initial_positions'], list)
    clone = canonical_lib.CanonicalJoints.from_config(config)
    assert not clone.trainable
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(clone.canonical_locs().numpy(), layer.canonical_locs().numpy())


def test_bad_inputs():
    with pytest.raises(ValueError, match='duplicates'):
        canonical_lib.CanonicalJoints(['a', 'b', 'a'], np.zeros([3, 3]))
    with pytest.raises(ValueError, match='initial_positions'):
        canonical_lib.CanonicalJoints(['a', 'b'], np.zeros([3, 3]))
    with pytest.raises(ValueError, match='joint_names'):
        canonical_lib.CanonicalJoints([], np.zeros([0, 3]))
