"""Finding and loading the user's SMPL-family model files in a body-model folder.

`--body_model_dir` holds the official downloads, one sub-folder per family (file and folder
names are matched case-insensitively):

    <body_model_dir>/smpl/SMPL_NEUTRAL.pkl, SMPL_MALE.pkl, SMPL_FEMALE.pkl
        (or the SMPL v1.0/v1.1 names basicModel_neutral_lbs_10_207_0_v1.0.0.pkl,
         basicmodel_m_lbs_10_207_0_v1.0.0.pkl, basicModel_f_lbs_10_207_0_v1.0.0.pkl, and the
         same with v1.1.0; or .npz files with the SMPL_* stems)
    <body_model_dir>/smplh/SMPLH_MALE.pkl, SMPLH_FEMALE.pkl      (MANO v1.2; also .npz)
    <body_model_dir>/smplx/SMPLX_NEUTRAL.npz, SMPLX_MALE.npz, SMPLX_FEMALE.npz  (also .pkl)
    <body_model_dir>/smpl/smpl_kid_template.npy, <body_model_dir>/smplx/smplx_kid_template.npy
        (optional: AGORA's SMIL / SMIL-X kid templates, needed only for kid_factor != 0;
         also accepted directly in <body_model_dir>)

`load_body_model` returns one normalised dict per (family, gender) (see its docstring), cached.

Conventions confirmed against the smplx Python library (`smplx/body_models.py`):
- SMPL-X `shapedirs` hold shape AND expression components. With more than 300 columns
  (SMPL-X v1.1: 300 shape + 100 expression) the expression components start at column 300;
  otherwise (v1.0: 10 shape + 10 expression) they are columns 10..19 and only the first 10
  columns are shape components.
- Kid blend shape (AGORA): the kid template is centred on its vertex mean, then its difference
  to the adult template is ONE extra shape direction: `kid_template - mean(kid_template, axis=0)
  - v_template`, weighted by the kid factor (the 11th beta of AGORA's kid fits).
"""

import functools
import hashlib
import os

import numpy as np

from nlf_tf.body_models import kinds
from nlf_tf.body_models.smpl_file import ModelFileError, load_smpl_model

# Accepted file stems per (family, gender initial), in order of preference.
_STEMS = {
    ('smpl', 'n'): ('SMPL_NEUTRAL', 'basicModel_neutral_lbs_10_207_0_v1.0.0',
                    'basicModel_neutral_lbs_10_207_0_v1.1.0'),
    ('smpl', 'm'): ('SMPL_MALE', 'basicmodel_m_lbs_10_207_0_v1.0.0',
                    'basicmodel_m_lbs_10_207_0_v1.1.0'),
    ('smpl', 'f'): ('SMPL_FEMALE', 'basicModel_f_lbs_10_207_0_v1.0.0',
                    'basicModel_f_lbs_10_207_0_v1.1.0'),
    ('smplh', 'm'): ('SMPLH_MALE',),
    ('smplh', 'f'): ('SMPLH_FEMALE',),
    ('smplx', 'n'): ('SMPLX_NEUTRAL',),
    ('smplx', 'm'): ('SMPLX_MALE',),
    ('smplx', 'f'): ('SMPLX_FEMALE',),
}
# SMPL-X is distributed as .npz first; SMPL and SMPL+H as .pkl.
_EXTENSIONS = {'smpl': ('.pkl', '.npz'), 'smplh': ('.pkl', '.npz'), 'smplx': ('.npz', '.pkl')}

# SMPL-X: with more shapedirs columns than this, expression components start here (v1.1).
_SMPLX_SHAPE_SPACE = 300
# SMPL-X v1.0 layout: 10 shape then 10 expression components.
_SMPLX_V10_SHAPES = 10
_SMPLX_V10_EXPRESSIONS = 10


def _gender_initial(family, gender):
    return kinds.kind_name(family, gender).rsplit('_', 1)[1]


def _listdir_ci(directory):
    """{lower-case name: actual name} of a directory's entries ({} if it does not exist)."""
    try:
        names = sorted(os.listdir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return {}
    result = {}
    for name in names:
        result.setdefault(name.lower(), name)
    return result


def _family_dir(body_model_dir, family):
    """The family's sub-folder (matched case-insensitively); the lower-case path if absent."""
    actual = _listdir_ci(body_model_dir).get(family)
    return os.path.join(body_model_dir, actual or family)


def find_model_file(body_model_dir, family, gender):
    """Path of the model file of `family` ('smpl'|'smplh'|'smplx') and `gender`.

    `gender` is 'female'|'male'|'neutral' or 'f'|'m'|'n'. Raises ValueError for an unknown
    family / gender and ModelFileError naming the expected path if no accepted file exists.
    """
    body_model_dir = os.fspath(body_model_dir)
    initial = _gender_initial(family, gender)
    folder = _family_dir(body_model_dir, family)
    entries = _listdir_ci(folder)
    stems = _STEMS[family, initial]
    for stem in stems:
        for ext in _EXTENSIONS[family]:
            actual = entries.get((stem + ext).lower())
            if actual is not None and os.path.isfile(os.path.join(folder, actual)):
                return os.path.join(folder, actual)
    expected = os.path.join(folder, stems[0] + _EXTENSIONS[family][0])
    alternatives = ', '.join(s + e for s in stems for e in _EXTENSIONS[family]
                             if s + e != stems[0] + _EXTENSIONS[family][0])
    raise ModelFileError(
        expected, '<file>',
        f'{kinds.GENDERS[initial]} {family} model file not found; --body_model_dir expects '
        f'{family}/{stems[0]}{_EXTENSIONS[family][0]} (also accepted: {alternatives}; see '
        f"README 'Body-model files')")


def find_kid_template(body_model_dir, family):
    """Path of `<family>_kid_template.npy` in the family folder (or the folder itself), or None."""
    if family not in kinds.FAMILIES:
        raise ValueError(f'unknown body-model family {family!r}; known: '
                         f'{", ".join(kinds.FAMILIES)}')
    body_model_dir = os.fspath(body_model_dir)
    name = f'{family}_kid_template.npy'
    for folder in (_family_dir(body_model_dir, family), body_model_dir):
        actual = _listdir_ci(folder).get(name)
        if actual is not None and os.path.isfile(os.path.join(folder, actual)):
            return os.path.join(folder, actual)
    return None


def model_fingerprint(path):
    """sha256 hex digest of the file's bytes."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def load_body_model(body_model_dir, family, gender):
    """The normalised model dict of `family`/`gender` from `body_model_dir` (cached).

    Entries (NumPy float64 unless noted; arrays are read-only since the dict is shared):
      family ('smplx'), gender ('f'|'m'|'n'), kind ('smplx_n'), path (model file),
      v_template [V,3], shapedirs [V,3,S] (shape components only), exprdirs [V,3,E]
      (SMPL-X expression components; [V,3,0] for other families), posedirs [V,3,9(J-1)],
      J_regressor [J,V], weights [V,J], parents int64 [J] (-1 for the root), faces int32 [F,3],
      hand_mean [90] (left hand 45 then right hand 45; zeros if the file has none, e.g. SMPL),
      kid_shapedir [V,3] or None (no kid template), kid_template_path (str or None),
      num_joints, num_vertices; plus `kintree_table` int64 [2,J] and `f` (= faces), the
      smpl_file names, so the dict also works with `nlf_tf.canonical_space.canonical_smpl`.
    Raises ModelFileError (missing / malformed file, or a file of another family).
    """
    body_model_dir = os.path.abspath(os.fspath(body_model_dir))
    initial = _gender_initial(family, gender)
    return _load_cached(body_model_dir, family, initial)


def clear_cache():
    """Forgets the models loaded so far (e.g. after replacing files in a body-model folder)."""
    _load_cached.cache_clear()


@functools.lru_cache(maxsize=None)
def _load_cached(body_model_dir, family, initial):
    path = find_model_file(body_model_dir, family, initial)
    raw = load_smpl_model(path)
    n_joints = raw['J_regressor'].shape[0]
    expected_joints = kinds.NUM_JOINTS[family]
    if n_joints != expected_joints:
        others = [f for f, n in kinds.NUM_JOINTS.items() if n == n_joints]
        hint = f' (looks like a {others[0]} file)' if others else ''
        raise ModelFileError(
            path, 'kintree_table',
            f'has {n_joints} joints{hint}, but a {family} model has {expected_joints}; '
            f'--body_model_dir expects the {family} files in its {family}/ folder')

    shapedirs_all = raw['shapedirs']
    n_cols = shapedirs_all.shape[2]
    if family == 'smplx':
        if n_cols > _SMPLX_SHAPE_SPACE:
            shapedirs = shapedirs_all[:, :, :_SMPLX_SHAPE_SPACE]
            exprdirs = shapedirs_all[:, :, _SMPLX_SHAPE_SPACE:]
        else:
            shapedirs = shapedirs_all[:, :, :_SMPLX_V10_SHAPES]
            exprdirs = shapedirs_all[:, :, _SMPLX_V10_SHAPES:
                                     _SMPLX_V10_SHAPES + _SMPLX_V10_EXPRESSIONS]
    else:
        shapedirs = shapedirs_all
        exprdirs = shapedirs_all[:, :, :0]

    hand_mean = np.zeros(90)
    if 'hands_meanl' in raw:
        hand_mean[:45] = raw['hands_meanl']
    if 'hands_meanr' in raw:
        hand_mean[45:] = raw['hands_meanr']

    v_template = raw['v_template']
    kid_path = find_kid_template(body_model_dir, family)
    kid_shapedir = None
    if kid_path is not None:
        kid_shapedir = _kid_shapedir(kid_path, v_template)

    model = dict(
        family=family, gender=initial, kind=f'{family}_{initial}', path=path,
        v_template=v_template, shapedirs=np.ascontiguousarray(shapedirs),
        exprdirs=np.ascontiguousarray(exprdirs), posedirs=raw['posedirs'],
        J_regressor=raw['J_regressor'], weights=raw['weights'],
        parents=np.asarray(raw['kintree_table'][0], np.int64),
        faces=np.asarray(raw['f'], np.int32), hand_mean=hand_mean,
        kid_shapedir=kid_shapedir, kid_template_path=kid_path,
        num_joints=int(n_joints), num_vertices=int(v_template.shape[0]),
        kintree_table=raw['kintree_table'], f=np.asarray(raw['f'], np.int32))
    for value in model.values():
        if isinstance(value, np.ndarray):
            value.flags.writeable = False
    return model


def _kid_shapedir(path, v_template):
    try:
        kid = np.load(path, allow_pickle=False)
    except Exception as e:
        raise ModelFileError(path, '<file>', f'cannot read the kid template: {e}') from None
    try:
        kid = np.asarray(kid, np.float64)
    except (TypeError, ValueError) as e:
        raise ModelFileError(path, '<array>', f'kid template is not numeric: {e}') from None
    if kid.shape != v_template.shape:
        raise ModelFileError(path, '<array>',
                             f'kid template must be [{v_template.shape[0]}, 3] like the model '
                             f'template, got {list(kid.shape)}')
    if not np.all(np.isfinite(kid)):
        raise ModelFileError(path, '<array>', 'kid template contains non-finite values')
    # smplx library convention: centre the kid template, then take the offset to the adult one.
    return kid - kid.mean(axis=0) - v_template
