"""Loading SMPL-family model files (SMPL, SMPL+H, SMPL-X) into plain NumPy arrays.

Two file layouts are read:

- `.npz` (e.g. the SMPL-X / SMPL+H downloads, or a converted SMPL file): arrays stored under the
  keys below; read with `allow_pickle=False`.
- the official `.pkl` (a Python 2 pickle, e.g. `basicModel_neutral_lbs_10_207_0_v1.0.0.pkl`,
  `SMPL_NEUTRAL.pkl`). Some of its arrays (`v_template`, `shapedirs`, ...) are pickled chumpy
  `Ch` objects and `J_regressor` is a scipy sparse matrix. We unpickle WITHOUT chumpy: a custom
  `pickle.Unpickler` maps every `chumpy.*` class to a small stand-in that keeps the pickled
  state (chumpy's `Ch.__getstate__` is the instance `__dict__`, whose `'x'` entry holds the
  array), and maps scipy sparse classes to a stand-in rebuilt from `data/indices/indptr/_shape`
  (robust to scipy's module renames). Only an allow-list of globals can be loaded (numpy array
  reconstruction, a few builtins, chumpy / scipy-sparse stand-ins); anything else is refused,
  since a pickle from an unknown source could otherwise run arbitrary code.

`load_smpl_model(path)` returns a dict with exactly these entries:

- `v_template`    float64 [V, 3]   rest-pose template (model's own axes: y up, facing +z)
- `shapedirs`     float64 [V, 3, S] shape blend shapes
- `posedirs`      float64 [V, 3, P] pose blend shapes, P = 9 (J - 1)
- `J_regressor`   float64 [J, V]   dense joint regressor
- `weights`       float64 [V, J]   skinning weights
- `kintree_table` int64 [2, J]     row 0: parent of each joint, -1 for the root (files store
                                   the root's parent as 2**32 - 1); row 1: joint ids
- `f`             int32 [F, 3]     triangle vertex ids

and, only if the file has them (SMPL-X and SMPL+H files), the optional entries

- `hands_meanl`, `hands_meanr` float64 [45] mean left / right hand pose (15 finger joints x
                                   axis-angle); a pose in the "flat hand mean" convention is the
                                   stored hand pose plus this mean
"""

import os

import numpy as np
import scipy.sparse

from nlf_tf import safe_pickle

REQUIRED_KEYS = ('v_template', 'shapedirs', 'posedirs', 'J_regressor', 'weights',
                 'kintree_table', 'f')
OPTIONAL_KEYS = ('hands_meanl', 'hands_meanr')


class ModelFileError(ValueError):
    """A body-model file is missing, unreadable or malformed; names the file and the field."""

    def __init__(self, file, field, message):
        self.file = file
        self.field = field
        self.message = message
        super().__init__(f'{file}: field {field!r}: {message}')

    def __reduce__(self):
        return type(self), (self.file, self.field, self.message)


def load_smpl_model(path):
    """Reads an SMPL-family model file (`.npz` or `.pkl`) into the dict described above."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelFileError(path, '<file>', 'body-model file not found')
    if path.endswith('.npz'):
        raw = _read_npz(path)
    elif path.endswith('.pkl'):
        raw = _read_pkl(path)
    else:
        raise ModelFileError(path, '<file>', 'unknown body-model file type; expected .npz or .pkl')
    return _validate(path, raw)


def kintree_parents(model):
    """Parent index per joint (int64 [J], -1 for the root) of a loaded model dict."""
    return np.asarray(model['kintree_table'][0], np.int64)


# --------------------------------------------------------------------------------------------
# .npz

def _read_npz(path):
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as e:  # zipfile / format errors come in many types
        raise ModelFileError(path, '<file>', f'cannot read as .npz: {e}') from None
    raw = {}
    with archive:
        for key in REQUIRED_KEYS:
            if key not in archive.files:
                raise ModelFileError(path, key, 'missing from the .npz file')
            try:
                raw[key] = archive[key]
            except ValueError as e:  # e.g. an object array, which needs pickle
                raise ModelFileError(
                    path, key, f'cannot be read without pickle ({e}); store it as a plain '
                               f'numeric array') from None
        for key in OPTIONAL_KEYS:
            if key in archive.files:
                try:
                    raw[key] = archive[key]
                except ValueError as e:
                    raise ModelFileError(path, key, f'cannot be read without pickle ({e})') \
                        from None
    return raw


# --------------------------------------------------------------------------------------------
# .pkl without chumpy

class _ChumpyStandIn:
    """Replaces any chumpy class during unpickling; keeps the pickled state only."""
    chumpy_class = 'Ch'

    def __init__(self, *args, **kwargs):
        self.state = None

    def __setstate__(self, state):
        self.state = state


class _SparseStandIn:
    """Replaces a scipy sparse matrix class during unpickling; rebuilt by `_to_array`."""
    sparse_format = 'csc'

    def __init__(self, *args, **kwargs):
        self.state = None

    def __setstate__(self, state):
        self.state = state


_SPARSE_FORMATS = {'csc_matrix': 'csc', 'csr_matrix': 'csr', 'coo_matrix': 'coo',
                   'csc_array': 'csc', 'csr_array': 'csr', 'coo_array': 'coo'}


class _ModelUnpickler(safe_pickle.SafeUnpickler):
    """The numpy-only unpickler plus stand-ins for chumpy and scipy-sparse classes."""

    def __init__(self, file, **kwargs):
        super().__init__(file, **kwargs)
        self._standins = {}

    def extra_global(self, module, name):
        if module == 'chumpy' or module.startswith('chumpy.'):
            key = ('chumpy', name)
            if key not in self._standins:
                self._standins[key] = type(f'Chumpy{name}', (_ChumpyStandIn,),
                                           {'chumpy_class': name})
            return self._standins[key]
        if module.startswith('scipy.sparse') and name in _SPARSE_FORMATS:
            key = ('sparse', name)
            if key not in self._standins:
                self._standins[key] = type(f'Sparse{name}', (_SparseStandIn,),
                                           {'sparse_format': _SPARSE_FORMATS[name]})
            return self._standins[key]
        return None


def _read_pkl(path):
    # latin1 (the default): the official files are Python 2 pickles holding numpy byte buffers.
    obj = safe_pickle.load(
        path, unpickler=_ModelUnpickler,
        refuse=lambda module, name: ModelFileError(
            path, '<pickle>', f'refusing to load the global {module}.{name} from the pickle'),
        error=lambda message: ModelFileError(path, '<file>', message))
    if not isinstance(obj, dict):
        raise ModelFileError(path, '<file>', f'expected a pickled dict, got {type(obj).__name__}')
    raw = {}
    for key in REQUIRED_KEYS:
        if key not in obj:
            raise ModelFileError(path, key, 'missing from the .pkl file')
        raw[key] = _to_array(path, key, obj[key])
    for key in OPTIONAL_KEYS:
        if key in obj:
            raw[key] = _to_array(path, key, obj[key])
    return raw


def _to_array(path, field, value):
    if isinstance(value, _ChumpyStandIn):
        state = value.state
        if not isinstance(state, dict) or 'x' not in state:
            raise ModelFileError(
                path, field, f'is a chumpy {value.chumpy_class} object whose value cannot be '
                             f'recovered without chumpy (no stored "x"); convert the file '
                             f'to .npz')
        return _to_array(path, field, state['x'])
    if isinstance(value, _SparseStandIn):
        return _sparse_to_dense(path, field, value)
    if scipy.sparse.issparse(value):
        return value.toarray()
    try:
        return np.asarray(value)
    except Exception as e:
        raise ModelFileError(path, field, f'cannot convert to an array: {e}') from None


def _sparse_to_dense(path, field, value):
    state = value.state if isinstance(value.state, dict) else {}
    shape = state.get('_shape', state.get('shape'))
    try:
        shape = tuple(int(s) for s in shape)
        if value.sparse_format == 'coo':
            if 'coords' in state:
                row, col = state['coords']
            else:
                row, col = state['row'], state['col']
            matrix = scipy.sparse.coo_matrix((state['data'], (row, col)), shape=shape)
        else:
            cls = (scipy.sparse.csc_matrix if value.sparse_format == 'csc'
                   else scipy.sparse.csr_matrix)
            matrix = cls((state['data'], state['indices'], state['indptr']), shape=shape)
        return matrix.toarray()
    except Exception as e:
        raise ModelFileError(path, field,
                             f'cannot rebuild the pickled sparse matrix: {type(e).__name__}: '
                             f'{e}') from None


# --------------------------------------------------------------------------------------------
# validation

def _validate(path, raw):
    def arr(key, dtype):
        try:
            return np.asarray(raw[key], dtype=dtype)
        except (TypeError, ValueError) as e:
            raise ModelFileError(path, key, f'not numeric: {e}') from None

    v_template = arr('v_template', np.float64)
    if v_template.ndim != 2 or v_template.shape[1] != 3:
        raise ModelFileError(path, 'v_template', f'must be [V, 3], got {list(v_template.shape)}')
    n_verts = v_template.shape[0]

    j_regressor = arr('J_regressor', np.float64)
    if j_regressor.ndim != 2 or j_regressor.shape[1] != n_verts:
        raise ModelFileError(path, 'J_regressor',
                             f'must be [J, {n_verts}], got {list(j_regressor.shape)}')
    n_joints = j_regressor.shape[0]

    weights = arr('weights', np.float64)
    if weights.shape != (n_verts, n_joints):
        raise ModelFileError(path, 'weights',
                             f'must be [{n_verts}, {n_joints}], got {list(weights.shape)}')

    shapedirs = arr('shapedirs', np.float64)
    if shapedirs.ndim != 3 or shapedirs.shape[:2] != (n_verts, 3):
        raise ModelFileError(path, 'shapedirs',
                             f'must be [{n_verts}, 3, S], got {list(shapedirs.shape)}')

    posedirs = arr('posedirs', np.float64)
    if posedirs.shape != (n_verts, 3, 9 * (n_joints - 1)):
        raise ModelFileError(path, 'posedirs', f'must be [{n_verts}, 3, {9 * (n_joints - 1)}], '
                                               f'got {list(posedirs.shape)}')

    kintree = arr('kintree_table', np.float64)
    if kintree.shape != (2, n_joints):
        raise ModelFileError(path, 'kintree_table',
                             f'must be [2, {n_joints}], got {list(kintree.shape)}')
    kintree = kintree.astype(np.int64)
    parents = kintree[0].copy()
    # The root's parent is stored as 2**32 - 1 (uint32 -1) or -1; anything out of range counts.
    roots = (parents < 0) | (parents >= n_joints)
    parents[roots] = -1
    if np.count_nonzero(roots) != 1 or parents[0] != -1:
        raise ModelFileError(path, 'kintree_table', 'joint 0 must be the only root')
    if np.any(parents[1:] >= np.arange(1, n_joints)):
        raise ModelFileError(path, 'kintree_table', 'every parent must precede its child')
    kintree[0] = parents

    faces = arr('f', np.float64)
    if (faces.ndim != 2 or faces.shape[1] != 3 or np.any(faces < 0)
            or np.any(faces >= n_verts) or np.any(faces != np.round(faces))):
        raise ModelFileError(path, 'f', f'must be [F, 3] vertex ids in [0, {n_verts})')

    for key, value in (('v_template', v_template), ('J_regressor', j_regressor),
                       ('weights', weights), ('shapedirs', shapedirs), ('posedirs', posedirs)):
        if not np.all(np.isfinite(value)):
            raise ModelFileError(path, key, 'contains non-finite values')

    result = dict(v_template=v_template, shapedirs=shapedirs, posedirs=posedirs,
                  J_regressor=j_regressor, weights=weights, kintree_table=kintree,
                  f=faces.astype(np.int32))
    for key in OPTIONAL_KEYS:
        if key in raw:
            value = arr(key, np.float64).reshape(-1)
            if value.shape != (45,) or not np.all(np.isfinite(value)):
                raise ModelFileError(path, key, f'must be 45 finite numbers (15 joints x 3), '
                                                f'got shape {list(np.shape(raw[key]))}')
            result[key] = value
    return result
