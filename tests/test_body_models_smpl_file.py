"""Tests for nlf_tf.body_models.smpl_file: .npz and chumpy-free .pkl loading."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from nlf_tf.body_models import smpl_file

N_VERTS, N_JOINTS = 10, 3


def _toy_arrays(seed=0):
    rng = np.random.default_rng(seed)
    j_regressor = np.zeros([N_JOINTS, N_VERTS])
    j_regressor[0, [0, 1]] = 0.5
    j_regressor[1, 4] = 1.0
    j_regressor[2, [7, 8, 9]] = [0.2, 0.3, 0.5]
    weights = rng.uniform(size=[N_VERTS, N_JOINTS])
    weights /= weights.sum(axis=1, keepdims=True)
    return dict(
        v_template=rng.normal(size=[N_VERTS, 3]),
        shapedirs=rng.normal(size=[N_VERTS, 3, 4]),
        posedirs=rng.normal(size=[N_VERTS, 3, 9 * (N_JOINTS - 1)]),
        J_regressor=j_regressor,
        weights=weights,
        kintree_table=np.array([[2 ** 32 - 1, 0, 1], [0, 1, 2]], np.uint32),
        f=np.array([[0, 1, 2], [2, 3, 4], [5, 6, 9]], np.uint32))


def _check_loaded(model, arrays):
    assert sorted(model) == sorted(smpl_file.REQUIRED_KEYS)
    for key in ('v_template', 'shapedirs', 'posedirs', 'J_regressor', 'weights'):
        assert model[key].dtype == np.float64
        np.testing.assert_array_equal(model[key], arrays[key])
    np.testing.assert_array_equal(model['kintree_table'], [[-1, 0, 1], [0, 1, 2]])
    assert model['f'].dtype == np.int32
    np.testing.assert_array_equal(model['f'], arrays['f'])
    np.testing.assert_array_equal(smpl_file.kintree_parents(model), [-1, 0, 1])


def test_npz_roundtrip(tmp_path):
    arrays = _toy_arrays()
    path = tmp_path / 'toy.npz'
    np.savez(path, extra_field=np.arange(3), **arrays)
    _check_loaded(smpl_file.load_smpl_model(path), arrays)


def test_npz_missing_and_malformed_fields(tmp_path):
    arrays = _toy_arrays()
    missing = dict(arrays)
    del missing['weights']
    np.savez(tmp_path / 'missing.npz', **missing)
    with pytest.raises(smpl_file.ModelFileError, match="'weights'.*missing"):
        smpl_file.load_smpl_model(tmp_path / 'missing.npz')

    bad = dict(arrays, posedirs=arrays['posedirs'][:, :, :5])
    np.savez(tmp_path / 'bad.npz', **bad)
    with pytest.raises(smpl_file.ModelFileError, match="'posedirs'"):
        smpl_file.load_smpl_model(tmp_path / 'bad.npz')

    bad = dict(arrays, f=arrays['f'] + N_VERTS)
    np.savez(tmp_path / 'badf.npz', **bad)
    with pytest.raises(smpl_file.ModelFileError, match="'f'"):
        smpl_file.load_smpl_model(tmp_path / 'badf.npz')

    with pytest.raises(smpl_file.ModelFileError, match='not found'):
        smpl_file.load_smpl_model(tmp_path / 'nothing.npz')


# The writer runs in a separate interpreter that has a stand-in `chumpy` package modelled on the
# real one: chumpy.ch.Ch pickles its __dict__ (minus two caches), the array under 'x'.
_FAKE_CHUMPY = '''
class Ch(object):
    def __init__(self, x):
        self.x = x
        self._dirty_vars = set()
        self._itr = None
        self._parents = {}
        self._cache = {'r': None}
        self._depends_on_deps = {}
        self._make_dense = False
        self._make_sparse = False

    def __getstate__(self):
        state = dict(self.__dict__)
        del state['_parents']
        del state['_cache']
        return state
'''

_WRITER = '''
import pickle, sys
import numpy as np
import scipy.sparse
import chumpy.ch
arrays = dict(np.load(sys.argv[1]))
model = dict(arrays)
model['v_template'] = chumpy.ch.Ch(arrays['v_template'])
model['shapedirs'] = chumpy.ch.Ch(arrays['shapedirs'])
model['J_regressor'] = scipy.sparse.csc_matrix(arrays['J_regressor'])
model['bs_style'] = 'lbs'
with open(sys.argv[2], 'wb') as f:
    pickle.dump(model, f, protocol=2)
'''


def _write_chumpy_pickle(tmp_path, arrays):
    fake = tmp_path / 'fake_site' / 'chumpy'
    fake.mkdir(parents=True)
    (fake / '__init__.py').write_text('')
    (fake / 'ch.py').write_text(textwrap.dedent(_FAKE_CHUMPY))
    np.savez(tmp_path / 'arrays.npz', **arrays)
    out = tmp_path / 'model.pkl'
    env = dict(os.environ, PYTHONPATH=str(tmp_path / 'fake_site'))
    subprocess.run([sys.executable, '-c', _WRITER, str(tmp_path / 'arrays.npz'), str(out)],
                   check=True, env=env, capture_output=True)
    return out


def test_pkl_with_chumpy_objects_loads_without_chumpy(tmp_path, monkeypatch):
    arrays = _toy_arrays(seed=1)
    path = _write_chumpy_pickle(tmp_path, arrays)
    assert b'chumpy.ch' in path.read_bytes()  # the fixture really holds chumpy objects
    # Any attempt to import chumpy in this process now fails.
    monkeypatch.setitem(sys.modules, 'chumpy', None)
    monkeypatch.setitem(sys.modules, 'chumpy.ch', None)
    with pytest.raises(ImportError):
        import chumpy  # noqa: F401
    _check_loaded(smpl_file.load_smpl_model(path), arrays)


def test_pkl_refuses_unknown_globals(tmp_path):
    import pickle
    arrays = _toy_arrays()
    arrays['v_template'] = os.getcwd  # a global that must not be resolved
    path = tmp_path / 'evil.pkl'
    with open(path, 'wb') as f:
        pickle.dump(arrays, f, protocol=2)
    with pytest.raises(smpl_file.ModelFileError, match='refusing to load'):
        smpl_file.load_smpl_model(path)


def test_pkl_missing_field(tmp_path):
    import pickle
    arrays = _toy_arrays()
    del arrays['kintree_table']
    path = tmp_path / 'partial.pkl'
    with open(path, 'wb') as f:
        pickle.dump(arrays, f, protocol=2)
    with pytest.raises(smpl_file.ModelFileError, match="'kintree_table'.*missing"):
        smpl_file.load_smpl_model(path)
