"""Tests for nlf_tf.body_models.files (finding and loading the official body-model files).

The helpers here (`PARENTS`, `model_arrays`, `write_model`, `write_kid_template`) write tiny
random models in the official layouts; the numpy_model and tf_model tests import them.
"""

import hashlib
import os
import pickle

import numpy as np
import pytest
import scipy.sparse

from nlf_tf.body_models import files, kinds
from nlf_tf.body_models.smpl_file import ModelFileError

_BODY_PARENTS = [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19]


def _hand_parents(wrist, first):
    # Five fingers of three joints each: joint 1 hangs off the wrist, 2 off 1, 3 off 2.
    return [p for f in range(5) for p in (wrist, first + 3 * f, first + 3 * f + 1)]


# The official kinematic trees (kintree_table row 0) in kinds.JOINT_NAMES order.
PARENTS = {
    'smpl': np.array(_BODY_PARENTS + [20, 21]),
    'smplh': np.array(_BODY_PARENTS + _hand_parents(20, 22) + _hand_parents(21, 37)),
    'smplx': np.array(_BODY_PARENTS + [15, 15, 15] + _hand_parents(20, 25)
                      + _hand_parents(21, 40)),
}
FILE_NAMES = {
    ('smpl', 'n'): 'SMPL_NEUTRAL.pkl', ('smpl', 'm'): 'SMPL_MALE.pkl',
    ('smpl', 'f'): 'SMPL_FEMALE.pkl', ('smplh', 'm'): 'SMPLH_MALE.pkl',
    ('smplh', 'f'): 'SMPLH_FEMALE.pkl', ('smplx', 'n'): 'SMPLX_NEUTRAL.npz',
    ('smplx', 'm'): 'SMPLX_MALE.npz', ('smplx', 'f'): 'SMPLX_FEMALE.npz',
}
# shapedirs columns of each family's file (SMPL-X v1.0: 10 shape + 10 expression).
SHAPEDIR_COLUMNS = {'smpl': 10, 'smplh': 16, 'smplx': 20}


def descendants(family, joint):
    """Set of strict descendants of `joint` in the family's tree."""
    parents = PARENTS[family]
    result = set()
    for j in range(len(parents)):
        p = parents[j]
        while p >= 0:
            if p == joint:
                result.add(j)
                break
            p = parents[p]
    return result


def model_arrays(family, seed=0, verts_per_joint=3, shapedir_columns=None, posedir_scale=0.02,
                 hand_mean=True):
    """Random but well-formed model arrays (official keys) of `family`.

    Joints are placed along a random tree; each joint owns `verts_per_joint` vertices around it,
    skinned to the joint and its parent; the joint regressor averages the joint's own vertices.
    """
    rng = np.random.default_rng(seed)
    parents = PARENTS[family]
    n_joints = len(parents)
    n_verts = n_joints * verts_per_joint
    cols = SHAPEDIR_COLUMNS[family] if shapedir_columns is None else shapedir_columns
    joint_pos = np.zeros([n_joints, 3])
    for j in range(1, n_joints):
        joint_pos[j] = joint_pos[parents[j]] + rng.normal(0, 0.15, 3)
    owner = np.repeat(np.arange(n_joints), verts_per_joint)
    v_template = joint_pos[owner] + rng.normal(0, 0.05, [n_verts, 3])
    j_regressor = np.zeros([n_joints, n_verts])
    j_regressor[owner, np.arange(n_verts)] = 1.0 / verts_per_joint
    weights = np.zeros([n_verts, n_joints])
    own = rng.uniform(0.5, 1.0, n_verts)
    weights[np.arange(n_verts), owner] = own
    parent_of_owner = parents[owner]
    has_parent = parent_of_owner >= 0
    weights[np.arange(n_verts)[has_parent], parent_of_owner[has_parent]] = 1 - own[has_parent]
    weights[~has_parent, 0] = 1.0
    faces = np.stack([np.arange(n_verts), np.roll(np.arange(n_verts), 1),
                      np.roll(np.arange(n_verts), 2)], axis=1)
    kintree = np.stack([np.where(parents < 0, 2 ** 32 - 1, parents), np.arange(n_joints)])
    arrays = dict(
        v_template=v_template,
        shapedirs=rng.normal(0, 0.01, [n_verts, 3, cols]),
        posedirs=rng.normal(0, posedir_scale, [n_verts, 3, 9 * (n_joints - 1)]),
        J_regressor=j_regressor, weights=weights, kintree_table=kintree.astype(np.uint32),
        f=faces.astype(np.uint32))
    if hand_mean and family != 'smpl':
        arrays['hands_meanl'] = rng.normal(0, 0.3, 45)
        arrays['hands_meanr'] = rng.normal(0, 0.3, 45)
    return arrays


def write_model(body_model_dir, family, gender, arrays, name=None):
    """Writes `arrays` as `<dir>/<family>/<name>`: .npz as is, .pkl with a sparse J_regressor."""
    name = name or FILE_NAMES[family, gender[0]]
    folder = os.path.join(body_model_dir, family)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    if name.lower().endswith('.npz'):
        np.savez(path, **arrays)
    else:
        obj = dict(arrays, J_regressor=scipy.sparse.csc_matrix(arrays['J_regressor']),
                   bs_style='lbs', bs_type='lrotmin')
        with open(path, 'wb') as f:
            pickle.dump(obj, f, protocol=2)
    return path


def write_kid_template(body_model_dir, family, kid_vertices):
    folder = os.path.join(body_model_dir, family)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f'{family}_kid_template.npy')
    np.save(path, kid_vertices)
    return path


@pytest.fixture(autouse=True)
def _fresh_cache():
    files.clear_cache()
    yield
    files.clear_cache()


# --------------------------------------------------------------------------------------------


def test_find_model_file_official_names_and_alternatives(tmp_path):
    d = str(tmp_path)
    for (family, g), name in FILE_NAMES.items():
        path = write_model(d, family, g, model_arrays(family, verts_per_joint=1))
        for gender in (g, kinds.GENDERS[g], kinds.GENDERS[g].upper()):
            assert files.find_model_file(d, family, gender) == path

    # SMPL v1.0 download names and case-insensitive matching of folder and file names.
    other = tmp_path / 'other'
    path = write_model(str(other), 'smpl', 'f', model_arrays('smpl', verts_per_joint=1),
                       name='basicModel_f_lbs_10_207_0_v1.0.0.pkl')
    assert files.find_model_file(other, 'smpl', 'female') == path
    os.rename(other / 'smpl', other / 'SMPL')
    os.rename(other / 'SMPL' / 'basicModel_f_lbs_10_207_0_v1.0.0.pkl',
              other / 'SMPL' / 'BASICMODEL_F_LBS_10_207_0_V1.0.0.PKL')
    assert files.find_model_file(other, 'smpl', 'f') == str(
        other / 'SMPL' / 'BASICMODEL_F_LBS_10_207_0_V1.0.0.PKL')

    # SMPL-X: .npz preferred over .pkl; .pkl accepted alone.
    write_model(d, 'smplx', 'n', model_arrays('smplx', verts_per_joint=1),
                name='SMPLX_NEUTRAL.pkl')
    assert files.find_model_file(d, 'smplx', 'n').endswith('SMPLX_NEUTRAL.npz')
    os.remove(tmp_path / 'smplx' / 'SMPLX_NEUTRAL.npz')
    assert files.find_model_file(d, 'smplx', 'n').endswith('SMPLX_NEUTRAL.pkl')


def test_find_model_file_errors(tmp_path):
    with pytest.raises(ModelFileError) as info:
        files.find_model_file(tmp_path, 'smplx', 'neutral')
    err = info.value
    assert err.file == os.path.join(str(tmp_path), 'smplx', 'SMPLX_NEUTRAL.npz')
    assert err.field == '<file>'
    assert 'not found' in str(err)
    assert '--body_model_dir expects smplx/SMPLX_NEUTRAL.npz' in str(err)

    with pytest.raises(ModelFileError, match='smpl/SMPL_MALE.pkl'):
        files.find_model_file(tmp_path, 'smpl', 'm')
    with pytest.raises(ValueError, match='gender'):
        files.find_model_file(tmp_path, 'smplh', 'neutral')  # no neutral SMPL+H
    with pytest.raises(ValueError, match='family'):
        files.find_model_file(tmp_path, 'star', 'f')
    with pytest.raises(ValueError, match='family'):
        files.find_kid_template(tmp_path, 'star')


def test_wrong_family_is_refused(tmp_path):
    # An SMPL file (24 joints) put where the SMPL-X neutral file belongs.
    path = write_model(str(tmp_path), 'smplx', 'n', model_arrays('smpl', verts_per_joint=1),
                       name='SMPLX_NEUTRAL.npz')
    with pytest.raises(ModelFileError) as info:
        files.load_body_model(tmp_path, 'smplx', 'n')
    assert info.value.file == path
    assert info.value.field == 'kintree_table'
    assert '24 joints' in str(info.value) and 'smpl file' in str(info.value)
    assert '55' in str(info.value)


@pytest.mark.parametrize('family', ['smpl', 'smplh', 'smplx'])
def test_load_body_model_entries(tmp_path, family):
    gender = kinds.FAMILY_GENDERS[family][0]
    arrays = model_arrays(family, seed=3)
    path = write_model(str(tmp_path), family, gender, arrays)
    model = files.load_body_model(tmp_path, family, kinds.GENDERS[gender])
    n_joints = kinds.NUM_JOINTS[family]
    n_verts = n_joints * 3
    assert model['family'] == family and model['gender'] == gender
    assert model['kind'] == f'{family}_{gender}' and model['path'] == path
    assert model['num_joints'] == n_joints and model['num_vertices'] == n_verts
    np.testing.assert_array_equal(model['v_template'], arrays['v_template'])
    np.testing.assert_array_equal(model['J_regressor'], arrays['J_regressor'])  # was sparse
    np.testing.assert_array_equal(model['weights'], arrays['weights'])
    np.testing.assert_array_equal(model['posedirs'], arrays['posedirs'])
    np.testing.assert_array_equal(model['parents'], PARENTS[family])
    assert model['parents'].dtype == np.int64
    np.testing.assert_array_equal(model['faces'], arrays['f'])
    assert model['faces'].dtype == np.int32
    np.testing.assert_array_equal(model['kintree_table'][0], PARENTS[family])

    if family == 'smplx':  # v1.0 layout: 10 shape then 10 expression columns
        np.testing.assert_array_equal(model['shapedirs'], arrays['shapedirs'][:, :, :10])
        np.testing.assert_array_equal(model['exprdirs'], arrays['shapedirs'][:, :, 10:20])
    else:
        np.testing.assert_array_equal(model['shapedirs'], arrays['shapedirs'])
        assert model['exprdirs'].shape == (n_verts, 3, 0)

    if family == 'smpl':
        np.testing.assert_array_equal(model['hand_mean'], np.zeros(90))
    else:
        np.testing.assert_array_equal(model['hand_mean'][:45], arrays['hands_meanl'])
        np.testing.assert_array_equal(model['hand_mean'][45:], arrays['hands_meanr'])
    assert model['kid_shapedir'] is None and model['kid_template_path'] is None

    # Cached per (absolute dir, family, gender), and read-only since it is shared.
    rel = os.path.relpath(str(tmp_path))
    assert files.load_body_model(rel, family, gender) is model
    with pytest.raises(ValueError):
        model['v_template'][0, 0] = 1.0


def test_smplx_v11_layout_and_missing_hand_mean(tmp_path):
    # v1.1: 300 shape + 100 expression columns (tiny V).
    arrays = model_arrays('smplx', seed=4, verts_per_joint=1, shapedir_columns=400,
                          hand_mean=False)
    write_model(str(tmp_path), 'smplx', 'f', arrays)
    model = files.load_body_model(tmp_path, 'smplx', 'female')
    np.testing.assert_array_equal(model['shapedirs'], arrays['shapedirs'][:, :, :300])
    np.testing.assert_array_equal(model['exprdirs'], arrays['shapedirs'][:, :, 300:])
    np.testing.assert_array_equal(model['hand_mean'], np.zeros(90))


def test_smplh_npz_and_bad_hand_mean(tmp_path):
    arrays = model_arrays('smplh', seed=5, verts_per_joint=1)
    write_model(str(tmp_path), 'smplh', 'm', arrays, name='SMPLH_MALE.npz')
    model = files.load_body_model(tmp_path, 'smplh', 'm')
    np.testing.assert_array_equal(model['hand_mean'][45:], arrays['hands_meanr'])

    bad = dict(arrays, hands_meanl=np.zeros(12))
    path = write_model(str(tmp_path), 'smplh', 'f', bad)
    with pytest.raises(ModelFileError, match="'hands_meanl'") as info:
        files.load_body_model(tmp_path, 'smplh', 'f')
    assert info.value.file == path


def test_kid_template(tmp_path):
    arrays = model_arrays('smpl', seed=6, verts_per_joint=2)
    write_model(str(tmp_path), 'smpl', 'n', arrays)
    v_template = arrays['v_template']
    # A kid template that is the adult one shrunk by half about the origin and shifted: after
    # centring on its mean, kid_shapedir = (0.5 v - 0.5 mean(v)) - v = -0.5 (v + mean(v)).
    kid = 0.5 * v_template + np.array([3.0, -1.0, 2.0])
    kid_path = write_kid_template(str(tmp_path), 'smpl', kid)
    assert files.find_kid_template(tmp_path, 'smpl') == kid_path
    assert files.find_kid_template(tmp_path, 'smplx') is None
    model = files.load_body_model(tmp_path, 'smpl', 'n')
    expected = -0.5 * (v_template + v_template.mean(axis=0))
    np.testing.assert_allclose(model['kid_shapedir'], expected, atol=1e-12)
    assert model['kid_template_path'] == kid_path

    # Also accepted directly in the body-model folder.
    os.rename(kid_path, tmp_path / 'smpl_kid_template.npy')
    assert files.find_kid_template(tmp_path, 'smpl') == str(tmp_path / 'smpl_kid_template.npy')

    # Wrong vertex count.
    write_kid_template(str(tmp_path), 'smpl', kid[:-1])
    files.clear_cache()
    with pytest.raises(ModelFileError, match='kid template must be'):
        files.load_body_model(tmp_path, 'smpl', 'n')


def test_model_fingerprint(tmp_path):
    path = write_model(str(tmp_path), 'smpl', 'm', model_arrays('smpl', verts_per_joint=1))
    with open(path, 'rb') as f:
        data = f.read()
    assert files.model_fingerprint(path) == hashlib.sha256(data).hexdigest()
    with open(path, 'ab') as f:
        f.write(b'\0')
    assert files.model_fingerprint(path) == hashlib.sha256(data + b'\0').hexdigest()
