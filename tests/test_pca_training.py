import glob
import os

import numpy as np
import pytest
import tensorflow as tf

from nlf_tf import config, demo_data, geometry, pca_training, training
from nlf_tf.pca_loss import PCALoss

NAMES, CANON = demo_data.demo_joint_table()


def test_skeleton_joint_ids_and_errors(tmp_path, monkeypatch):
    ids, root = pca_training.skeleton_joint_ids('demo', NAMES)
    np.testing.assert_array_equal(ids, np.arange(16))
    assert NAMES[root] == 'pelv'
    # A table that lacks a joint of the spec is named in the error.
    with pytest.raises(ValueError, match=r"joint_names \['rwri'\]"):
        pca_training.skeleton_joint_ids('demo', NAMES[:-1])
    # Dataset skeletons are looked up by their suffixed table names.
    from nlf_tf import joint_table
    table, _ = joint_table.build_joint_table(['coco', 'mads'])
    ids, root = pca_training.skeleton_joint_ids('mads', table)
    assert [table[i] for i in ids][:2] == ['neck_mads', 'pelv_mads'] and root == 1


def test_gather_skeleton():
    values = tf.constant(np.arange(2 * 4 * 2, dtype=np.float32).reshape(2, 4, 2))
    point_ids = tf.constant([[2, 0, 1, -1], [1, -1, 0, 2]])
    validity = tf.constant([[True, True, True, False], [True, False, True, False]])
    out, present = pca_training.gather_skeleton(values, point_ids, validity, [0, 1, 2])
    np.testing.assert_array_equal(present.numpy(), [[True, True, True], [True, True, False]])
    np.testing.assert_array_equal(out.numpy()[0], values.numpy()[0, [1, 2, 0]])
    np.testing.assert_array_equal(out.numpy()[1, :2], values.numpy()[1, [2, 0]])


def test_parsers():
    assert pca_training.parse_components('5') == 5
    assert isinstance(pca_training.parse_components('5'), int)
    assert pca_training.parse_components('0.9') == 0.9
    assert pca_training.parse_int_list('0,2', 'x') == [0, 2]
    assert pca_training.parse_int_list('0,1;2,3', 'x', nested=True) == [[0, 1], [2, 3]]
    assert pca_training.parse_int_list(None, 'x') is None
    with pytest.raises(ValueError, match='pca_columns'):
        pca_training.parse_int_list('a,b', 'pca_columns')
    with pytest.raises(ValueError, match='pca_components_to_keep'):
        pca_training.parse_components('many')


def small_dataset(steps=30):
    return demo_data.make_demo_dataset(
        proc_side=64, num_points=32, batch_sizes=dict(param=1, kp3d=3, dense=1, kp2d=3),
        seed=0, pool_size=64, num_steps=steps)


@pytest.mark.parametrize('coords', ['2d', '3d'])
def test_collect_labels_frames(coords):
    category = 'kp2d' if coords == '2d' else 'kp3d'
    ids, root = pca_training.skeleton_joint_ids('demo', NAMES)
    labels = pca_training.collect_labels(small_dataset(), category, ids, root, coords, 30)
    assert labels.shape == (90, 16, 2 if coords == '2d' else 3)
    missing = np.isnan(labels).any(-1)
    assert missing.any() and not missing.all()  # demo drops some joints
    # Recompute the first batch's first example by hand.
    part = next(iter(small_dataset(1)))[category]
    pid = part['point_ids'].numpy()[0]
    valid = part['point_validity'].numpy()[0]
    gt = part['coords2d_true' if coords == '2d' else 'coords3d_true'].numpy()[0]
    for j in range(16):
        slots = np.where((pid == j) & valid)[0]
        if slots.size == 0:
            assert np.isnan(labels[0, j]).all()
        elif coords == '2d':
            np.testing.assert_allclose(labels[0, j], gt[slots[0]])
        elif not np.isnan(labels[0, root]).any():
            root_slot = np.where((pid == root) & valid)[0][0]
            np.testing.assert_allclose(labels[0, j], gt[slots[0]] - gt[root_slot], atol=1e-6)


def test_term_equals_layer_on_complete_rows():
    rng = np.random.default_rng(0)
    labels = rng.normal(size=(200, 16, 2)).astype(np.float32) * 20 + 32
    layer = PCALoss('pca_singleview', components_to_keep=5, data_module=labels, log_weight=1.0)
    term = pca_training.PCATerm(layer, 'kp2d', np.arange(16), 0, '2d')
    k = np.array([[60, 0, 31.5], [0, 60, 31.5], [0, 0, 1]], np.float32)
    pred3d = np.concatenate([rng.normal(size=(3, 20, 2)) * 0.3,
                             np.full((3, 20, 1), 3.0)], -1).astype(np.float32)
    point_ids = np.full((3, 20), -1, np.int32)
    point_ids[:, :16] = rng.permuted(np.tile(np.arange(16), (3, 1)), axis=1)
    validity = point_ids >= 0
    validity[1, 3] = False  # example 1 misses one joint → not used
    inps = {'kp2d': dict(point_ids=tf.constant(point_ids), point_validity=tf.constant(validity),
                         intrinsics=tf.constant(np.repeat(k[None], 3, 0)))}
    preds = {'kp2d': dict(coords3d_abs=tf.constant(pred3d))}
    logs = term(inps, preds)
    proj = geometry.project_pose(pred3d, np.repeat(k[None], 3, 0)).numpy()
    expected = []
    for b in (0, 2):
        skel = np.zeros((16, 2), np.float32)
        for slot in range(16):
            skel[point_ids[b, slot]] = proj[b, slot]
        err = layer.per_keypoint_error(skel[None]).numpy()[0]
        expected.append(np.maximum(err - layer.epsilon.numpy(), 0))
    np.testing.assert_allclose(logs['train_pca_singleview_loss'].numpy(),
                               np.mean(expected), rtol=1e-5)
    weight = 1 / (2 * np.exp(1.0))
    np.testing.assert_allclose(logs['pca_singleview_weight'].numpy(), weight, rtol=1e-6)
    np.testing.assert_allclose(logs['train_pca_singleview_loss_weighted'].numpy(),
                               weight * np.mean(expected), rtol=1e-5)


def test_demo_run_with_pca_logs_the_term(tmp_path):
    cfg = config.default_config(
        data='demo', logdir=str(tmp_path / 'pca'), training_steps=3, checkpoint_period=3,
        log_period=1, image_summary_period=0, proc_side=64, backbone='mobilenetv3small',
        dtype='float32', batch_size_parametric=1, batch_size=2, batch_size_densepose=1,
        batch_size_2d=4, num_points=32, demo_pool_size=64, backbone_link_dim=8,
        field_posenc_dim=16, field_hidden_size=16, verbose=0, pca_loss=True, pca_coords='2d',
        pca_fit_batches=20, pca_components_to_keep='6', pca_log_weight=0.0)
    trainer = training.run_training(cfg)
    assert trainer.pca_term is not None
    tags = set()
    for path in glob.glob(os.path.join(cfg.logdir, 'events.out.tfevents.*')):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(v.tag for v in event.summary.value)
    assert {'train_pca_singleview_loss', 'pca_singleview_weight',
            'train_pca_singleview_loss_weighted'} <= tags
    saved = dict(tf.train.list_variables(os.path.join(cfg.logdir, 'ckpt-3')))
    assert any(name.startswith('pca_loss/') for name in saved)
    # A bad PCA setting is a configuration error naming the flag.
    bad = config.default_config(**{**cfg, 'logdir': str(tmp_path / 'bad'),
                                   'pca_components_to_keep': 'lots'})
    with pytest.raises(training.ConfigError, match='pca_components_to_keep'):
        training.run_training(bad)
