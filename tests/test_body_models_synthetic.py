"""Tests for nlf_tf.body_models.synthetic: synthetic SMPL-family files in the official layouts."""

import os
import pickle

import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.csgraph

from nlf_tf import canonical_space
from nlf_tf.body_models import kinds, smpl_file
from nlf_tf.body_models import synthetic

# Official kinematic trees (kintree_table row 0 of SMPL, MANO's SMPLH_*.pkl, SMPLX_*.npz).
OFFICIAL_PARENTS = {
    'smpl': [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21],
    'smplh': [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19,
              20, 22, 23, 20, 25, 26, 20, 28, 29, 20, 31, 32, 20, 34, 35,
              21, 37, 38, 21, 40, 41, 21, 43, 44, 21, 46, 47, 21, 49, 50],
    'smplx': [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19,
              15, 15, 15, 20, 25, 26, 20, 28, 29, 20, 31, 32, 20, 34, 35, 20, 37, 38,
              21, 40, 41, 21, 43, 44, 21, 46, 47, 21, 49, 50, 21, 52, 53],
}
ALL_KINDS = ('smpl_f', 'smpl_m', 'smpl_n', 'smplh_f', 'smplh_m', 'smplx_f', 'smplx_m', 'smplx_n')


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp('body_models')
    paths = synthetic.write_synthetic_body_models(root)
    return str(root), paths


@pytest.fixture(scope='module')
def models(model_dir):
    _, paths = model_dir
    return {kind: smpl_file.load_smpl_model(path) for kind, path in paths.items()}


def _joint(model, family, name):
    return model['J_regressor'][kinds.JOINT_NAMES[family].index(name)] @ model['v_template']


def test_layout_and_loading(model_dir, models):
    root, paths = model_dir
    assert sorted(paths) == sorted(ALL_KINDS)
    expected_names = {
        'smpl_f': 'smpl/SMPL_FEMALE.pkl', 'smpl_m': 'smpl/SMPL_MALE.pkl',
        'smpl_n': 'smpl/SMPL_NEUTRAL.pkl', 'smplh_f': 'smplh/SMPLH_FEMALE.pkl',
        'smplh_m': 'smplh/SMPLH_MALE.pkl', 'smplx_f': 'smplx/SMPLX_FEMALE.npz',
        'smplx_m': 'smplx/SMPLX_MALE.npz', 'smplx_n': 'smplx/SMPLX_NEUTRAL.npz'}
    for kind, rel in expected_names.items():
        assert paths[kind] == os.path.join(root, *rel.split('/'))
        assert os.path.getsize(paths[kind]) < 1.5e6
    for kind, model in models.items():
        family = kinds.family_of(kind)
        n_joints = kinds.NUM_JOINTS[family]
        n_verts = model['v_template'].shape[0]
        assert model['J_regressor'].shape == (n_joints, n_verts)
        assert model['posedirs'].shape == (n_verts, 3, 9 * (n_joints - 1))
        assert model['shapedirs'].shape == (n_verts, 3, 20 if family == 'smplx' else 10)
        np.testing.assert_array_equal(smpl_file.kintree_parents(model), OFFICIAL_PARENTS[family])
        np.testing.assert_array_equal(synthetic.PARENTS[family], OFFICIAL_PARENTS[family])
        assert ('hands_meanl' in model) == (family != 'smpl')
    for family in ('smpl', 'smplx'):
        kid = np.load(os.path.join(root, family, f'{family}_kid_template.npy'))
        assert kid.shape == models[f'{family}_n']['v_template'].shape


def test_pickle_and_npz_keys_are_official(model_dir):
    _, paths = model_dir
    with open(paths['smpl_n'], 'rb') as f:
        raw = pickle.load(f)
    assert isinstance(raw['J_regressor'], scipy.sparse.csc_matrix)
    assert raw['bs_style'] == 'lbs' and raw['bs_type'] == 'lrotmin'
    assert raw['kintree_table'][0, 0] == 2 ** 32 - 1
    np.testing.assert_allclose(raw['J'], raw['J_regressor'] @ raw['v_template'], atol=1e-12)
    with open(paths['smplh_m'], 'rb') as f:
        raw = pickle.load(f)
    assert {'hands_meanl', 'hands_meanr', 'hands_componentsl'} <= set(raw)
    with np.load(paths['smplx_n']) as npz:
        assert {'v_template', 'shapedirs', 'posedirs', 'J_regressor', 'weights', 'kintree_table',
                'f', 'hands_meanl', 'hands_meanr'} <= set(npz.files)
        left, right = npz['hands_meanl'].reshape(15, 3), npz['hands_meanr'].reshape(15, 3)
    # Slight curl, right hand the mirror image of the left.
    assert 0.01 < np.abs(left).max() < 0.3
    np.testing.assert_allclose(right, left * [1, -1, -1])


def test_rows_sum_to_one_and_every_joint_skins_vertices(models):
    for kind, model in models.items():
        reg, weights = model['J_regressor'], model['weights']
        np.testing.assert_allclose(reg.sum(axis=1), 1.0, atol=1e-12)
        assert reg.min() >= 0
        np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-12)
        assert np.all(weights.max(axis=0) == 1.0), kind  # each joint moves some vertices


def test_zero_pose_gives_template_and_joints_at_intended_places(models):
    for kind, model in models.items():
        n_joints = model['J_regressor'].shape[0]
        vertices, joints = canonical_space.lbs(model, np.zeros([n_joints, 3]))
        np.testing.assert_allclose(vertices, model['v_template'], atol=1e-12)
        np.testing.assert_allclose(joints, model['J_regressor'] @ model['v_template'],
                                   atol=1e-12)
    # Regressed pelvis = the centre of the pelvis tube's first ring, at the origin.
    for kind in ALL_KINDS:
        model = models[kind]
        ring = model['v_template'][:8 if kind.startswith(('smpl_', 'smplx')) else 6]
        np.testing.assert_allclose(_joint(model, kinds.family_of(kind), 'pelvis'),
                                   ring.mean(0), atol=1e-12)
        np.testing.assert_allclose(ring.mean(0), 0.0, atol=1e-12)
    # Hand-written places of the neutral models (metres, SMPL axes: x left, y up, z forward).
    expected = {
        'pelvis': (0, 0, 0), 'left_hip': (0.1, -0.06, 0), 'right_knee': (-0.1, -0.5, 0),
        'left_ankle': (0.1, -0.92, 0), 'left_foot': (0.1, -0.92, 0.13),
        'spine1': (0, 0.1, 0), 'neck': (0, 0.52, 0), 'head': (0, 0.652, 0),
        'left_collar': (0.095, 0.5, 0), 'left_wrist': (0.71, 0.48, 0),
        'right_wrist': (-0.71, 0.48, 0)}
    for family in ('smpl', 'smplx'):
        for name, pos in expected.items():
            np.testing.assert_allclose(_joint(models[f'{family}_n'], family, name), pos,
                                       atol=1e-6, err_msg=name)
    np.testing.assert_allclose(_joint(models['smpl_n'], 'smpl', 'left_hand'), (0.79, 0.48, 0),
                               atol=1e-6)
    smplx = models['smplx_n']
    for name, pos in {'left_index1': (0.80, 0.48, 0.027), 'left_index2': (0.84, 0.48, 0.027),
                      'right_pinky3': (-0.852, 0.48, -0.027), 'jaw': (0, 0.60, 0.015),
                      'left_eye_smplhf': (0.032, 0.675, 0.078),
                      'right_eye_smplhf': (-0.032, 0.675, 0.078),
                      'left_thumb1': (0.725, 0.48, 0.03),
                      'left_thumb2': (0.725 + 0.035 / np.sqrt(2), 0.48,
                                      0.03 + 0.035 / np.sqrt(2))}.items():
        np.testing.assert_allclose(_joint(smplx, 'smplx', name), pos, atol=1e-6, err_msg=name)


def test_smpl_body_is_the_demo_tube_mesh(models):
    from nlf_tf.data import synthetic as data_synthetic
    reference = data_synthetic.build_smpl_model()
    model = models['smpl_n']
    n_ref = len(reference['v_template'])
    np.testing.assert_array_equal(model['v_template'][:n_ref], reference['v_template'])
    np.testing.assert_array_equal(model['f'][:len(reference['f'])], reference['f'])
    np.testing.assert_allclose(model['shapedirs'][:n_ref, :, :2],
                               reference['shapedirs'][:, :, :2], atol=1e-15)
    np.testing.assert_allclose(model['J_regressor'] @ model['v_template'],
                               reference['J_regressor'] @ reference['v_template'], atol=1e-6)


def _mirror_match(points):
    """Distance from each x-mirrored point to the nearest point."""
    mirrored = points * [-1, 1, 1]
    d = np.linalg.norm(mirrored[:, None] - points[None], axis=-1)
    return d.min(axis=1)


def test_templates_are_left_right_symmetric(models):
    for kind in ALL_KINDS:
        model = models[kind]
        assert _mirror_match(model['v_template']).max() < 1e-9, kind
        family = kinds.family_of(kind)
        joints = model['J_regressor'] @ model['v_template']
        partner = canonical_space.smpl_joint_partners(kinds.JOINT_NAMES[family])
        np.testing.assert_allclose(joints[partner] * [-1, 1, 1], joints, atol=1e-9)


def _components(n_verts, faces):
    graph = scipy.sparse.coo_matrix(
        (np.ones(faces.size), (np.repeat(faces[:, 0], 3), faces.reshape(-1))),
        shape=(n_verts, n_verts))
    return scipy.sparse.csgraph.connected_components(graph, directed=False)[1]


def _signed_volume(vertices, faces):
    a, b, c = (vertices[faces[:, k]] for k in range(3))
    return np.einsum('ij,ij->i', a, np.cross(b, c)).sum() / 6


def test_mesh_is_closed_and_outward(models):
    for kind, model in models.items():
        faces = model['f'].astype(np.int64)
        vertices = model['v_template']
        assert len(np.unique(faces)) == len(vertices)  # no unused vertices
        directed = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
        # Consistent orientation: every directed edge once, and its reverse exactly once.
        keys = directed[:, 0] * len(vertices) + directed[:, 1]
        assert len(np.unique(keys)) == len(keys), kind
        reverse = directed[:, 1] * len(vertices) + directed[:, 0]
        assert np.all(np.isin(reverse, keys)), kind
        labels = _components(len(vertices), faces)
        for label in np.unique(labels):
            part = faces[labels[faces[:, 0]] == label]
            assert _signed_volume(vertices, part) > 0, (kind, label)
        assert _signed_volume(vertices, faces) > 0.02  # tens of litres


def test_hand_joints_move_their_vertices(models):
    for kind, joint in (('smplh_m', 'left_index2'), ('smplx_n', 'right_thumb1'),
                        ('smpl_n', 'left_hand')):
        model = models[kind]
        names = kinds.JOINT_NAMES[kinds.family_of(kind)]
        pose = np.zeros([len(names), 3])
        pose[names.index(joint)] = [0.0, 0.0, 0.6]
        vertices, _ = canonical_space.lbs(model, pose)
        moved = np.linalg.norm(vertices - model['v_template'], axis=1) > 1e-9
        # Exactly the vertices skinned to the joint or its descendants.
        parents = synthetic.PARENTS[kinds.family_of(kind)]
        subtree = {names.index(joint)}
        for j in range(len(names)):
            if parents[j] in subtree:
                subtree.add(j)
        skinned = np.isin(np.argmax(model['weights'], axis=1), sorted(subtree))
        np.testing.assert_array_equal(moved, skinned)
        assert 4 <= np.count_nonzero(moved) <= 60


def test_blend_shapes(models):
    model = models['smpl_n']
    v, dirs = model['v_template'], model['shapedirs']
    height = np.ptp(v[:, 1])
    np.testing.assert_allclose(np.ptp((v + dirs[:, :, 0])[:, 1]), 1.1 * height, rtol=1e-12)
    # Girth: the first tube's (pelvis to spine) radius grows by 20 %.
    ring = v[:8]
    radius = np.linalg.norm(ring - ring.mean(0), axis=1)
    grown = (v + dirs[:, :, 1])[:8]
    np.testing.assert_allclose(np.linalg.norm(grown - grown.mean(0), axis=1), 1.2 * radius)
    for k in range(2, 10):
        assert 0 < np.abs(dirs[:, :, k]).max() < 0.06
    for kind, m in models.items():
        assert 1e-4 < np.abs(m['posedirs']).max() < 0.03, kind

    smplx = models['smplx_n']
    exprdirs = smplx['shapedirs'][:, :, 10:]
    moved = np.abs(exprdirs).max(axis=(1, 2)) > 0
    neck_y = _joint(smplx, 'smplx', 'neck')[1]
    assert np.count_nonzero(moved) > 10
    assert np.all(smplx['v_template'][moved, 1] > neck_y)  # face only
    assert np.all(np.abs(smplx['v_template'][moved, 0]) < 0.1)
    assert np.abs(exprdirs).max() < 0.02


def test_genders_differ(models):
    for family in kinds.FAMILIES:
        heights = {g: np.ptp(models[f'{family}_{g}']['v_template'][:, 1])
                   for g in kinds.FAMILY_GENDERS[family]}
        assert heights['f'] < heights['m']
        if 'n' in heights:
            assert heights['f'] < heights['n'] < heights['m']
        width = {g: np.ptp(models[f'{family}_{g}']['v_template'][:, 0]) for g in ('f', 'm')}
        assert width['f'] < width['m']
        np.testing.assert_array_equal(models[f'{family}_f']['f'], models[f'{family}_m']['f'])


def test_kid_templates_are_child_proportioned(model_dir, models):
    root, _ = model_dir
    for family in ('smpl', 'smplx'):
        adult = models[f'{family}_n']
        kid = np.load(os.path.join(root, family, f'{family}_kid_template.npy'))
        ratio = np.ptp(kid[:, 1]) / np.ptp(adult['v_template'][:, 1])
        assert 0.5 < ratio < 0.75, ratio
        head = adult['weights'][:, kinds.JOINT_NAMES[family].index('head')] > 0
        head_ratio = np.ptp(kid[head, 1]) / np.ptp(adult['v_template'][head, 1])
        assert head_ratio > ratio + 0.15
        np.testing.assert_array_equal(kid, synthetic.build_kid_template(family))


def test_rewriting_is_idempotent_and_seeded(model_dir, tmp_path):
    root, paths = model_dir
    before = {k: (os.stat(p).st_mtime_ns, open(p, 'rb').read()) for k, p in paths.items()}
    again = synthetic.write_synthetic_body_models(root)
    assert again == paths
    for kind, path in paths.items():
        assert (os.stat(path).st_mtime_ns, open(path, 'rb').read()) == before[kind]
    assert not [n for n in os.listdir(os.path.join(root, 'smpl')) if n.startswith('.')]
    # Another seed gives other random components (so a different file).
    other = synthetic.write_synthetic_body_models(tmp_path, families=('smplx',), seed=1)
    assert sorted(other) == ['smplx_f', 'smplx_m', 'smplx_n']
    assert open(other['smplx_n'], 'rb').read() != before['smplx_n'][1]


def test_existing_files_are_never_overwritten(tmp_path):
    path = tmp_path / 'smpl' / 'SMPL_MALE.pkl'
    path.parent.mkdir()
    path.write_bytes(b'my own model')
    with pytest.raises(FileExistsError, match='SMPL_MALE.pkl.*refusing to overwrite'):
        synthetic.write_synthetic_body_models(tmp_path, families=('smpl',))
    assert path.read_bytes() == b'my own model'
    assert sorted(os.listdir(path.parent)) == ['SMPL_FEMALE.pkl', 'SMPL_MALE.pkl']

    # The same arrays serialised differently (e.g. by another numpy) count as identical.
    data = synthetic.build_body_model('smplx', 'neutral')
    path = tmp_path / 'smplx' / 'SMPLX_NEUTRAL.npz'
    path.parent.mkdir()
    np.savez(path, **data)
    content = path.read_bytes()
    synthetic.write_synthetic_body_models(tmp_path, families=('smplx',))
    assert path.read_bytes() == content


def test_bad_family():
    with pytest.raises(ValueError, match='families'):
        synthetic.write_synthetic_body_models('unused', families=('smplq',))
    with pytest.raises(ValueError, match='family'):
        synthetic.pose_for_demo(np.random.default_rng(0), 'smplq')


def test_pose_for_demo(models):
    rng = np.random.default_rng(3)
    for family in kinds.FAMILIES:
        names = kinds.JOINT_NAMES[family]
        kind = f'{family}_{kinds.FAMILY_GENDERS[family][-1]}'
        for _ in range(10):
            pose = synthetic.pose_for_demo(rng, family)
            assert pose.dtype == np.float32 and pose.shape == (3 * len(names),)
            pose = pose.reshape(-1, 3)
            np.testing.assert_array_equal(pose[0], 0.0)
            assert np.abs(pose).max() <= 1.6
            # Elbows bend forwards: about -y on the left, +y on the right.
            assert pose[names.index('left_elbow'), 1] <= 0 <= pose[names.index('right_elbow'), 1]
            assert pose[names.index('left_knee'), 0] >= 0
            _, joints = canonical_space.lbs(models[kind], pose)
            y = {n: joints[names.index(n), 1] for n in ('pelvis', 'head', 'left_ankle',
                                                        'right_ankle')}
            assert y['head'] > y['pelvis'] + 0.4
            assert max(y['left_ankle'], y['right_ankle']) < y['pelvis'] - 0.4
    np.testing.assert_array_equal(synthetic.pose_for_demo(7, 'smplx'),
                                  synthetic.pose_for_demo(np.random.default_rng(7), 'smplx'))


def test_load_body_model(model_dir):
    files = pytest.importorskip('nlf_tf.body_models.files')
    root, paths = model_dir
    left, right = synthetic.build_body_model('smplx', 'n')['hands_meanl'], \
        synthetic.build_body_model('smplx', 'n')['hands_meanr']
    for kind in ALL_KINDS:
        family, g = kind.split('_')
        model = files.load_body_model(root, family, g)
        assert model['path'] == paths[kind]
        assert model['num_joints'] == kinds.NUM_JOINTS[family]
        assert model['shapedirs'].shape[2] == 10
        assert model['exprdirs'].shape[2] == (10 if family == 'smplx' else 0)
        assert (model['kid_shapedir'] is not None) == (family != 'smplh')
        expected_mean = np.zeros(90) if family == 'smpl' else np.concatenate([left, right])
        np.testing.assert_allclose(model['hand_mean'], expected_mean)
    smplx = files.load_body_model(root, 'smplx', 'n')
    np.testing.assert_allclose(smplx['exprdirs'],
                               synthetic.build_body_model('smplx', 'n')['shapedirs'][:, :, 10:])
