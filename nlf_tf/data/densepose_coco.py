"""Reader for DensePose-COCO (category 'dense').

Expected layout under `root_dir` (each part can be overridden):

    DensePose_COCO/densepose_coco_2014_{split}.json   (`annotation_file=` overrides)
    UV_data/UV_Processed.mat                          (`uv_processed=` overrides)
    train2014/COCO_train2014_*.jpg                    (`images_dir=` overrides; also found
    (val2014/ for minival and valminusminival,         under coco/<folder>/)
     test2014/ for test)

plus the user's SMPL model file (`smpl_model=`, a `.pkl` or `.npz`; required, since the
canonical positions of the DensePose points are computed from it, see
`nlf_tf.canonical_space`). Splits: train (what NLF uses), valminusminival, minival, test.

Per annotation (following PosePile's `ds/densepose_coco/main.py`):
- only annotations with `dp_masks` and at least one DensePose point are used;
- keypoint filter from the data spec `densepose_coco` (`thresholds`): at least min_visible
  visible (v=2) and min_labelled labelled (v>=1) of the 17 COCO keypoints, and at least
  min_limb_joints of the spec's `limb_joints` (shoulders, elbows, wrists, hips, knees, ankles)
  valid; keypoints with v=0 are NaN; at least min_dp_points DensePose points;
- box = the annotation bbox rounded to whole pixels; the DensePose normalisation box is that box
  intersected with the image, and a point's image position is dp/255 * (clipped w, h) + the
  clipped box's top-left corner (the divisor is the spec's dp_coord_divisor, 255 as in
  PosePile, although the box is scaled to 256);
- each (I, U, V) is converted to an SMPL face (vertex-id triplet, 0-based) and barycentric
  coordinates through UV_Processed.mat: among the UV faces of chart I, the first (in file order)
  whose UV triangle contains (U, V), with its barycentric coordinates in the UV plane; if none
  contains it, the UV vertex of that chart nearest to (U, V), with one-hot barycentrics;
- the canonical position of each point is the barycentric combination of the canonical SMPL
  vertices of its face;
- mask = the instance segmentation as COCO RLE; camera = `Camera.from_fov(8, (H, W))`.
Image sizes come from the JSON's `images[]` entries (the images are not opened).
Example ids are `<image folder>/<file name>#<annotation id>`.
"""

import os

import numpy as np
import scipy.io

from nlf_tf import specs
from nlf_tf.data.example import DatasetError, Example, Skip, load_json_object

DATASET = 'densepose_coco'
SPEC_NAME = 'densepose_coco'
FOV_DEGREES = 8
NUM_CHARTS = 24
NUM_KEYPOINTS = 17
UNLABELLED, OCCLUDED, VISIBLE = 0, 1, 2
# Default of the spec's dp_coord_divisor: PosePile divides the DensePose coordinates by 255.
DP_COORD_SCALE = 255.0
SPLIT_IMAGE_FOLDERS = {
    'train': 'train2014', 'valminusminival': 'val2014', 'minival': 'val2014',
    'test': 'test2014'}
DP_FIELDS = ('dp_x', 'dp_y', 'dp_I', 'dp_U', 'dp_V')


def iter_examples(root_dir, split='train', smpl_model=None, uv_processed=None, images_dir=None,
                  annotation_file=None, **options):
    """Yields `Example` (category 'dense') or `Skip` records in annotation-file order.

    Args:
        root_dir: the DensePose data root (see the module docstring).
        split: 'train', 'valminusminival', 'minival' or 'test'.
        smpl_model: path of the SMPL model file (.pkl or .npz) or a dict loaded by
            `nlf_tf.body_models.smpl_file.load_smpl_model`; required.
        uv_processed: path of UV_Processed.mat (default root/UV_data/UV_Processed.mat).
        images_dir: folder of the COCO 2014 images of this split (default root/<folder> or
            root/coco/<folder>, <folder> = train2014, val2014 or test2014).
        annotation_file: the DensePose JSON (default
            root/DensePose_COCO/densepose_coco_2014_<split>.json).
    Raises (when called, before any record is yielded):
        DatasetError for a missing option, file or folder, malformed JSON or .mat content.
    """
    if options:
        raise TypeError(f'unknown options for the {DATASET} reader: {sorted(options)}')
    if split not in SPLIT_IMAGE_FOLDERS:
        raise ValueError(f'split must be one of {sorted(SPLIT_IMAGE_FOLDERS)}, got {split!r}')
    if smpl_model is None:
        raise DatasetError('--smpl_model', 'smpl_model',
                           'DensePose-COCO needs the SMPL model file (.pkl or .npz) to compute '
                           'canonical surface points; pass --smpl_model=/path/to/SMPL_NEUTRAL.pkl')
    root_dir = os.path.abspath(root_dir)
    canonical_vertices = _canonical_vertices(smpl_model)

    spec = specs.load_spec(SPEC_NAME)
    spec_file = specs.spec_path(SPEC_NAME)
    joint_names = list(spec.get('joint_names', []))
    if len(joint_names) != NUM_KEYPOINTS:
        raise DatasetError(spec_file, 'joint_names',
                           f'must list the {NUM_KEYPOINTS} COCO keypoints, got {len(joint_names)}')
    min_visible = _threshold(spec, spec_file, 'min_visible')
    min_labelled = _threshold(spec, spec_file, 'min_labelled')
    min_limb_joints = _threshold(spec, spec_file, 'min_limb_joints')
    min_dp_points = _threshold(spec, spec_file, 'min_dp_points', default=1)
    dp_divisor = _threshold(spec, spec_file, 'dp_coord_divisor', default=DP_COORD_SCALE)
    limb_joints = spec.get('limb_joints')
    if limb_joints is None:
        from nlf_tf.data.coco import LIMB_JOINTS as limb_joints
    missing = [n for n in limb_joints if n not in joint_names]
    if missing:
        raise DatasetError(spec_file, 'limb_joints', f'names joints not in joint_names: {missing}')
    limb_ids = np.array([joint_names.index(n) for n in limb_joints], np.int64)

    uv_processed = os.path.abspath(uv_processed or os.path.join(
        root_dir, 'UV_data', 'UV_Processed.mat'))
    converter = IUVConverter(uv_processed, num_smpl_vertices=len(canonical_vertices))

    folder = SPLIT_IMAGE_FOLDERS[split]
    if images_dir is None:
        candidates = [os.path.join(root_dir, folder), os.path.join(root_dir, 'coco', folder)]
        images_dir = next((d for d in candidates if os.path.isdir(d)), None)
        if images_dir is None:
            raise DatasetError(candidates[0], 'images_dir',
                               f'image folder not found (also looked for {candidates[1]}); '
                               f'pass images_dir')
    elif not os.path.isdir(images_dir):
        raise DatasetError(images_dir, 'images_dir', 'image folder not found')
    images_dir = os.path.abspath(images_dir)

    annotation_file = os.path.abspath(annotation_file or os.path.join(
        root_dir, 'DensePose_COCO', f'densepose_coco_2014_{split}.json'))
    data = load_json_object(annotation_file, 'annotation_file',
                            missing='DensePose annotation file not found')
    images = _parse_images(data, annotation_file)
    annotations = data.get('annotations')
    if not isinstance(annotations, list):
        raise DatasetError(annotation_file, 'annotations', 'required list missing')

    settings = dict(
        converter=converter, canonical_vertices=canonical_vertices, images=images,
        images_dir=images_dir, folder=folder, annotation_file=annotation_file,
        min_visible=min_visible, min_labelled=min_labelled, min_limb_joints=min_limb_joints,
        min_dp_points=min_dp_points, dp_divisor=dp_divisor, limb_ids=limb_ids)
    return _generate(annotations, settings)


def _generate(annotations, s):
    from nlf_tf.data.camera import Camera
    file = s['annotation_file']
    cameras = {}
    for i_ann, ann in enumerate(annotations):
        where = f'annotations[{i_ann}]'
        if not isinstance(ann, dict):
            yield Skip(f'{s["folder"]}/?#{i_ann}', 'annotation is not an object', file, where)
            continue
        image = s['images'].get(_hashable(ann.get('image_id')))
        ann_id = ann.get('id', f'index{i_ann}')
        if image is None:
            yield Skip(f'{s["folder"]}/?#{ann_id}', 'unknown image id', file,
                       f'{where}.image_id')
            continue
        example_id = f'{s["folder"]}/{image["file_name"]}#{ann_id}'
        result = _convert(ann, where, example_id, image, s)
        if isinstance(result, Skip):
            yield result
            continue
        key = (image['height'], image['width'])
        if key not in cameras:
            cameras[key] = Camera.from_fov(FOV_DEGREES, key)
        result.camera = cameras[key]
        yield result


def _convert(ann, where, example_id, image, s):
    """One annotation -> Example (camera filled in by the caller) or Skip."""
    file = s['annotation_file']

    def skip(reason, field):
        return Skip(example_id, reason, file, f'{where}.{field}')

    if 'dp_masks' not in ann:
        return skip('no DensePose annotation', 'dp_masks')
    dp = {}
    for name in DP_FIELDS:
        try:
            dp[name] = np.asarray(ann.get(name), np.float64).reshape(-1)
        except (TypeError, ValueError):
            return skip('DensePose field is not a list of numbers', name)
    n_points = len(dp['dp_x'])
    if n_points == 0 or n_points < s['min_dp_points']:
        return skip('no DensePose points' if n_points == 0 else 'too few DensePose points',
                    'dp_x')
    for name in DP_FIELDS[1:]:
        if len(dp[name]) != n_points:
            return skip('DensePose fields differ in length', name)
    for name in DP_FIELDS:
        if not np.all(np.isfinite(dp[name])):
            return skip('non-finite DensePose values', name)
    charts = dp['dp_I']
    if np.any(charts != np.round(charts)) or np.any(charts < 1) or np.any(charts > NUM_CHARTS):
        return skip('DensePose chart index out of range', 'dp_I')

    try:
        keypoints = np.asarray(ann.get('keypoints'), np.float64).reshape(-1)
    except (TypeError, ValueError):
        return skip('keypoints are not a list of numbers', 'keypoints')
    if keypoints.shape != (NUM_KEYPOINTS * 3,):
        return skip(f'keypoints must hold {NUM_KEYPOINTS}x3 numbers', 'keypoints')
    keypoints = keypoints.reshape(NUM_KEYPOINTS, 3)
    visibility = keypoints[:, 2]
    labelled = visibility != UNLABELLED
    coords = keypoints[:, :2].copy()
    coords[~labelled] = np.nan
    if not np.all(np.isfinite(coords[labelled])):
        return skip('non-finite keypoint coordinates', 'keypoints')
    if np.count_nonzero(visibility == VISIBLE) < s['min_visible']:
        return skip('too few visible keypoints', 'keypoints')
    if np.count_nonzero(labelled) < s['min_labelled']:
        return skip('too few labelled keypoints', 'keypoints')
    n_limbs = np.count_nonzero(np.all(np.isfinite(coords[s['limb_ids']]), axis=1))
    if n_limbs < s['min_limb_joints']:
        return skip('too few limb joints', 'keypoints')

    try:
        box = np.round(np.asarray(ann.get('bbox'), np.float64).reshape(-1))
    except (TypeError, ValueError):
        return skip('bbox is not a list of numbers', 'bbox')
    if box.shape != (4,) or not np.all(np.isfinite(box)):
        return skip('bbox must be 4 finite numbers', 'bbox')
    if box[2] <= 0 or box[3] <= 0:
        return skip('zero-area box', 'bbox')
    height, width = image['height'], image['width']
    x1, y1 = max(box[0], 0.0), max(box[1], 0.0)
    x2, y2 = min(box[0] + box[2], float(width)), min(box[1] + box[3], float(height))
    if x2 <= x1 or y2 <= y1:
        return skip('box outside the image', 'bbox')
    dense_imcoords = (np.stack([dp['dp_x'], dp['dp_y']], axis=1) / s['dp_divisor']
                      * [x2 - x1, y2 - y1] + [x1, y1])

    try:
        faces, barycoords = s['converter'](charts.astype(np.int64), dp['dp_U'], dp['dp_V'])
    except ValueError as e:
        return skip(str(e), 'dp_I')
    canonical = np.einsum('nfc,nf->nc', s['canonical_vertices'][faces].astype(np.float64),
                          barycoords)

    image_path = os.path.join(s['images_dir'], image['file_name'])
    if not os.path.isfile(image_path):
        return Skip(example_id, 'missing image', image_path, 'file_name')

    from nlf_tf.data.coco import segmentation_to_rle
    try:
        mask_rle = segmentation_to_rle(ann.get('segmentation'), (height, width))
    except (ValueError, TypeError):
        return skip('invalid segmentation', 'segmentation')

    return Example(
        dataset=DATASET, category='dense', example_id=example_id, image_path=image_path,
        image=None, camera=None, box=box.astype(np.float32),
        joints2d=coords.astype(np.float32), joints3d=None,
        dense_imcoords=dense_imcoords.astype(np.float32), dense_faces=faces.astype(np.int32),
        dense_barycoords=barycoords.astype(np.float32), mask_rle=mask_rle,
        dense_canonical=canonical.astype(np.float32))


class IUVConverter:
    """Maps DensePose (I, U, V) chart coordinates to SMPL faces and barycentric coordinates.

    Reads UV_Processed.mat: All_FaceIndices (chart per UV face), All_Faces (UV face -> 3 UV
    vertices, 1-based), All_U_norm / All_V_norm (UV-vertex chart coordinates), All_vertices
    (UV vertex -> SMPL vertex, 1-based).
    """

    def __init__(self, path, num_smpl_vertices=None):
        if not os.path.isfile(path):
            raise DatasetError(path, 'uv_processed', 'UV_Processed.mat not found')
        try:
            mat = scipy.io.loadmat(path)
        except Exception as e:  # scipy raises several types for corrupt files
            raise DatasetError(path, '<file>', f'cannot read as a MATLAB file: {e}') from None

        def field(name):
            if name not in mat:
                raise DatasetError(path, name, 'required field missing')
            try:
                return np.asarray(mat[name], np.float64)
            except (TypeError, ValueError):
                raise DatasetError(path, name, 'must be numeric') from None

        def index_field(name, array, upper):
            if (not np.all(np.isfinite(array)) or np.any(array != np.round(array))
                    or np.any(array < 1) or (upper is not None and np.any(array > upper))):
                bound = '' if upper is None else f'..{upper}'
                raise DatasetError(path, name, f'must hold 1-based indices 1{bound}')
            return array.astype(np.int64) - 1

        chart_of_face = field('All_FaceIndices').reshape(-1)
        faces = field('All_Faces')
        u = field('All_U_norm').reshape(-1)
        v = field('All_V_norm').reshape(-1)
        smpl_ids = field('All_vertices').reshape(-1)
        n_uv = len(u)
        if len(v) != n_uv:
            raise DatasetError(path, 'All_V_norm', f'has {len(v)} entries, All_U_norm {n_uv}')
        if len(smpl_ids) != n_uv:
            raise DatasetError(path, 'All_vertices',
                               f'has {len(smpl_ids)} entries, All_U_norm {n_uv}')
        if faces.ndim != 2 or faces.shape[1] != 3:
            raise DatasetError(path, 'All_Faces', f'must be [F, 3], got {list(faces.shape)}')
        if len(chart_of_face) != len(faces):
            raise DatasetError(path, 'All_FaceIndices',
                               f'has {len(chart_of_face)} entries for {len(faces)} faces')
        if not (np.all(np.isfinite(u)) and np.all(np.isfinite(v))):
            raise DatasetError(path, 'All_U_norm', 'UV coordinates must be finite')
        self.faces = index_field('All_Faces', faces, n_uv)
        self.uv_to_smpl = index_field('All_vertices', smpl_ids, num_smpl_vertices)
        charts = index_field('All_FaceIndices', chart_of_face, None) + 1
        self.uv = np.stack([u, v], axis=1)
        self.path = path
        self.chart_faces = {c: np.flatnonzero(charts == c) for c in np.unique(charts)}

    def locate(self, chart, uv):
        """(UV-face index [n], barycentric [n, 3]) of points `uv` [n, 2] on chart `chart`."""
        face_ids = self.chart_faces.get(int(chart))
        if face_ids is None or len(face_ids) == 0:
            raise ValueError(f'chart {int(chart)} has no faces in {self.path}')
        uv = np.asarray(uv, np.float64)
        corners = self.uv[self.faces[face_ids]]  # [F, 3, 2]
        p0 = corners[:, 0]
        edge1 = corners[:, 1] - p0  # [F, 2]
        edge2 = corners[:, 2] - p0
        rel = uv[:, np.newaxis] - p0  # [n, F, 2]
        area2 = _cross(edge1, edge2)  # twice the signed triangle area, [F]
        c2 = _cross(edge2, rel)  # [n, F]
        c1 = _cross(edge1, rel)
        with np.errstate(divide='ignore', invalid='ignore'):
            # Inside test as in DensePose's barycentric_coordinates_exists: the point is on the
            # same side of edge2 as vertex 1 and of edge1 as vertex 2, and the sub-areas are
            # within the triangle (boundaries included). Degenerate faces never match.
            w1 = np.abs(c2) / np.abs(area2)  # weight of vertex 1
            w2 = np.abs(c1) / np.abs(area2)  # weight of vertex 2
            inside = ((c2 * -area2 >= 0) & (c1 * area2 >= 0)
                      & (w1 <= 1) & (w2 <= 1) & (w1 + w2 <= 1))
        found = inside.any(axis=1)
        first = np.argmax(inside, axis=1)
        rows = np.arange(len(uv))
        w1, w2 = w1[rows, first], w2[rows, first]
        bary = np.stack([1 - (w1 + w2), w1, w2], axis=1)
        face = face_ids[first]

        if not np.all(found):
            # Nearest UV vertex: per corner slot the closest face, then the slot with the
            # strictly smallest distance (ties go to the last slot, as in DensePose).
            lost = np.flatnonzero(~found)
            dist = np.linalg.norm(uv[lost, np.newaxis, np.newaxis] - corners, axis=-1)  # n,F,3
            best_face = np.argmin(dist, axis=1)  # [n, 3]
            best = np.min(dist, axis=1)  # [n, 3]
            slot = np.full(len(lost), 2)
            slot[(best[:, 1] < best[:, 0]) & (best[:, 1] < best[:, 2])] = 1
            slot[(best[:, 0] < best[:, 1]) & (best[:, 0] < best[:, 2])] = 0
            face[lost] = face_ids[best_face[np.arange(len(lost)), slot]]
            bary[lost] = np.eye(3)[slot]
        return face, bary

    def __call__(self, charts, u, v):
        """SMPL faces (int64 [n, 3], 0-based vertex ids) and barycentrics (float64 [n, 3])."""
        charts = np.asarray(charts, np.int64).reshape(-1)
        uv = np.stack([np.asarray(u, np.float64).reshape(-1),
                       np.asarray(v, np.float64).reshape(-1)], axis=1)
        uv_faces = np.zeros(len(charts), np.int64)
        bary = np.zeros([len(charts), 3])
        for chart in np.unique(charts):
            sel = np.flatnonzero(charts == chart)
            uv_faces[sel], bary[sel] = self.locate(chart, uv[sel])
        return self.uv_to_smpl[self.faces[uv_faces]], bary


def _cross(a, b):
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def _canonical_vertices(smpl_model):
    from nlf_tf import canonical_space
    from nlf_tf.body_models import smpl_file
    if isinstance(smpl_model, dict):
        model = smpl_model
    else:
        try:
            model = smpl_file.load_smpl_model(smpl_model)
        except smpl_file.ModelFileError as e:
            field = 'smpl_model' if e.field == '<file>' else e.field
            raise DatasetError(e.file, field, f'{e.message} (the --smpl_model file)') from None
    try:
        return canonical_space.canonical_smpl_vertices(model)
    except (KeyError, ValueError) as e:
        source = smpl_model if isinstance(smpl_model, (str, os.PathLike)) else '<smpl_model>'
        raise DatasetError(os.fspath(source), 'smpl_model',
                           f'cannot build the canonical SMPL vertices: {e}') from None


def _threshold(spec, spec_file, key, default=None):
    thresholds = spec.get('thresholds', {})
    value = thresholds.get(key) if isinstance(thresholds, dict) else None
    if value is None:
        value = default
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise DatasetError(spec_file, f'thresholds.{key}', 'required number missing')
    return float(value)


def _hashable(value):
    return value if isinstance(value, (int, str)) else None


def _parse_images(data, file):
    entries = data.get('images')
    if not isinstance(entries, list):
        raise DatasetError(file, 'images', 'required list missing')
    images = {}
    for i, entry in enumerate(entries):
        where = f'images[{i}]'
        if not isinstance(entry, dict):
            raise DatasetError(file, where, 'must be an object')
        for key, types in (('id', (int, str)), ('file_name', str), ('height', int),
                           ('width', int)):
            if not isinstance(entry.get(key), types) or isinstance(entry.get(key), bool):
                raise DatasetError(file, f'{where}.{key}', 'required field missing or of the '
                                                           'wrong type')
        if entry['height'] <= 0 or entry['width'] <= 0:
            raise DatasetError(file, f'{where}.height', 'image size must be positive')
        images[entry['id']] = dict(file_name=entry['file_name'], height=entry['height'],
                                   width=entry['width'])
    return images
