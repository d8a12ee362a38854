"""Reader for COCO person keypoints (17 body joints) and COCO-WholeBody (133 joints), kp2d.

Layout under `root_dir` (the folder holding the extracted COCO archives):
    annotations/person_keypoints_{split}{year}.json     (variant='body', year 2014 or 2017)
    annotations/coco_wholebody_{split}_v1.0.json          (variant='wholebody', 2017 images;
                                                           also accepted directly in root_dir)
    {split}{year}/<file_name>                             (the images)

Selection follows PosePile (`posepile/ds/coco/main.py`), thresholds from the data spec:
- a person is a candidate if >= min_visible body keypoints are visible (v=2) and
  >= min_labelled are labelled (v>=1); unlabelled keypoints (v=0) become NaN;
- its keypoint box (bbox of all its valid keypoints, for WholeBody including face/hands/feet,
  as in PosePile) enlarged by box_enlarge must have a long side
  >= min_box_side px;
- body variant, single-person mode: dropped if the IoU of its enlarged keypoint box with that of
  any other candidate of the same image is >= max_iou;
- WholeBody: part keypoints (the spec's `parts`: foot, face, hands) are used only if the part's
  `*_valid` flag is set and the point's score is > part_min_score (0); NLF's merge rule (at least
  min_limb_joints = 7 of the spec's 12 `limb_joints` valid) is applied by default.
The person box is the annotation bbox, the mask the annotation segmentation (as COCO RLE), the
camera `Camera.from_fov(8, (H, W))` like NLF uses for 2D datasets.
"""

import os

import numpy as np

from nlf_tf import specs
from nlf_tf.data.example import DatasetError, Example, Skip, load_json_object

# COCO visibility flags
UNLABELLED, OCCLUDED, VISIBLE = 0, 1, 2
NUM_BODY_JOINTS = 17
# NLF's 2D merge rule counts these (ankles, knees, hips, wrists, elbows, shoulders). The readers
# use the spec's "limb_joints"; this copy is for other modules (e.g. densepose_coco) and a test
# checks that both agree.
LIMB_JOINTS = ('lsho', 'rsho', 'lelb', 'relb', 'lwri', 'rwri',
               'lhip', 'rhip', 'lkne', 'rkne', 'lank', 'rank')
FOV_DEGREES = 8

VARIANTS = {
    'body': dict(dataset='coco', spec='coco', default_year=2014),
    'wholebody': dict(dataset='coco_wholebody', spec='coco_wholebody', default_year=2017),
}


def iter_examples(root_dir, split='train', variant='body', year=None, *, single_person=None,
                  limb_filter=None, with_masks=True, annotation_file=None, image_dir=None):
    """Yields `Example` (category 'kp2d') or `Skip` records, images sorted by file name.

    Args:
        root_dir: COCO root folder (see the module docstring).
        split: 'train' or 'val'.
        variant: 'body' (dataset 'coco', 17 joints) or 'wholebody' ('coco_wholebody', 133).
        year: 2014 or 2017 for 'body' (default 2014 like PosePile); 'wholebody' is 2017 only.
        single_person: drop persons whose keypoint box overlaps another's (default: True for
            'body', False for 'wholebody').
        limb_filter: require more than 6 of the 12 limb joints to be valid (default: True for
            'wholebody', False for 'body'); the count comes from the spec ('min_limb_joints').
        with_masks: store the segmentation as `mask_rle` (else None).
        annotation_file, image_dir: override the default paths.
    Raises:
        DatasetError for a missing/malformed annotation file or missing required fields.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be 'body' or 'wholebody', got {variant!r}")
    if split not in ('train', 'val'):
        raise ValueError(f"split must be 'train' or 'val' (COCO test has no keypoints), "
                         f"got {split!r}")
    info = VARIANTS[variant]
    wholebody = variant == 'wholebody'
    year = info['default_year'] if year is None else int(year)
    if wholebody and year != 2017:
        raise ValueError(f'COCO-WholeBody annotates the 2017 images only, got year={year}')
    if not wholebody and year not in (2014, 2017):
        raise ValueError(f'year must be 2014 or 2017, got {year}')
    single_person = (not wholebody) if single_person is None else bool(single_person)
    limb_filter = wholebody if limb_filter is None else bool(limb_filter)

    spec_name = info['spec']
    spec = specs.load_spec(spec_name)
    joint_names = list(spec['joint_names'])
    parts = _spec_parts(spec, spec_name) if wholebody else []
    if len(joint_names) != NUM_BODY_JOINTS + sum(part['count'] for part in parts):
        raise ValueError(f'data spec {spec_name!r} lists {len(joint_names)} joints, its body '
                         f'and parts have {NUM_BODY_JOINTS + sum(p["count"] for p in parts)}')
    thresholds = _Thresholds(spec, spec_name)
    min_visible = thresholds.get('min_visible')
    min_labelled = thresholds.get('min_labelled')
    box_enlarge = thresholds.get('box_enlarge')
    min_box_side = thresholds.get('min_box_side')
    max_iou = thresholds.get('max_iou') if single_person else None
    part_min_score = thresholds.get('part_min_score') if wholebody else None
    min_limb_joints = thresholds.get('min_limb_joints') if limb_filter else None
    limb_ids = None
    if limb_filter:
        unknown = [n for n in spec.get('limb_joints', ()) if n not in joint_names]
        if 'limb_joints' not in spec or unknown:
            raise ValueError(f'data spec {spec_name!r} needs "limb_joints" naming its joints '
                             f'(unknown: {unknown})')
        limb_ids = np.array([joint_names.index(name) for name in spec['limb_joints']])

    root_dir = os.path.abspath(root_dir)
    if annotation_file is None:
        annotation_file = _default_annotation_file(root_dir, split, year, wholebody)
    if image_dir is None:
        image_dir = os.path.join(root_dir, f'{split}{year}')
    image_dir = os.path.abspath(image_dir)
    id_prefix = f'{split}{year}'

    data = load_json_object(annotation_file, missing='annotation file not found')
    images = _parse_images(data, annotation_file)
    annotations = _require(data, 'annotations', list, annotation_file, 'annotations')

    # Candidates (persons passing the keypoint-count thresholds) per image, in file order.
    candidates = {}
    for i_ann, ann in enumerate(annotations):
        where = f'annotations[{i_ann}]'
        if not isinstance(ann, dict):
            raise DatasetError(annotation_file, where, 'must be an object')
        image_id = ann.get('image_id')
        if not isinstance(image_id, (int, str)) or image_id not in images:
            raise DatasetError(annotation_file, f'{where}.image_id',
                               f'missing or not among the images: {image_id!r}')
        image = images[image_id]
        ann_id = f'{id_prefix}/{image["file_name"]}@ann{ann.get("id", i_ann)}'
        if ann.get('category_id', 1) != 1:
            yield Skip(ann_id, 'not a person', annotation_file, f'{where}.category_id')
            continue
        body = _keypoint_array(ann, 'keypoints', NUM_BODY_JOINTS, annotation_file, where)
        visibility = body[:, 2]
        if not np.all(np.isin(visibility, (UNLABELLED, OCCLUDED, VISIBLE))):
            raise DatasetError(annotation_file, f'{where}.keypoints',
                               f'visibility flags must be 0, 1 or 2, got {sorted(set(visibility))}')
        if np.count_nonzero(visibility == VISIBLE) < min_visible:
            yield Skip(ann_id, 'too few visible keypoints', annotation_file, f'{where}.keypoints')
            continue
        if np.count_nonzero(visibility >= OCCLUDED) < min_labelled:
            yield Skip(ann_id, 'too few labelled keypoints', annotation_file, f'{where}.keypoints')
            continue
        coords = body[:, :2].copy()
        labelled = visibility != UNLABELLED
        coords[~labelled] = np.nan
        if not np.all(np.isfinite(coords[labelled])) or np.any(coords[labelled] < 0):
            yield Skip(ann_id, 'invalid keypoint coordinates', annotation_file,
                       f'{where}.keypoints')
            continue
        if wholebody:
            coords = np.concatenate(
                [coords] + [_part_coords(ann, part, part_min_score, annotation_file, where)
                            for part in parts], axis=0)
        bbox = _box(ann, annotation_file, where)
        if not np.all(np.isfinite(bbox)):
            yield Skip(ann_id, 'invalid box', annotation_file, f'{where}.bbox')
            continue
        if bbox[2] <= 0 or bbox[3] <= 0:
            yield Skip(ann_id, 'zero-area box', annotation_file, f'{where}.bbox')
            continue
        candidates.setdefault(image_id, []).append(
            dict(ann=ann, where=where, coords=coords.astype(np.float32), bbox=bbox,
                 keypoint_box=expand_box(box_of_points(coords), box_enlarge)))

    dataset = info['dataset']
    for image_id in sorted(candidates, key=lambda i: images[i]['file_name']):
        image = images[image_id]
        persons = candidates[image_id]
        image_path = os.path.join(image_dir, image['file_name'])
        image_exists = os.path.isfile(image_path)
        camera = None
        for k, person in enumerate(persons):
            example_id = f'{id_prefix}/{image["file_name"]}#{k}'
            where = person['where']
            if np.max(person['keypoint_box'][2:]) < min_box_side:
                yield Skip(example_id, 'keypoint box too small', annotation_file,
                           f'{where}.keypoints')
                continue
            if max_iou is not None and any(
                    box_iou(person['keypoint_box'], other['keypoint_box']) >= max_iou
                    for other in persons if other is not person):
                yield Skip(example_id, 'overlaps another person', annotation_file,
                           f'{where}.keypoints')
                continue
            if min_limb_joints is not None:
                n_limbs = np.count_nonzero(np.all(np.isfinite(person['coords'][limb_ids]), axis=1))
                if n_limbs < min_limb_joints:
                    yield Skip(example_id, 'too few limb joints', annotation_file,
                               f'{where}.keypoints')
                    continue
            if not image_exists:
                yield Skip(example_id, 'missing image', image_path, 'file_name')
                continue
            mask_rle = None
            if with_masks:
                try:
                    mask_rle = segmentation_to_rle(
                        person['ann'].get('segmentation'), (image['height'], image['width']))
                except ValueError:
                    yield Skip(example_id, 'invalid segmentation', annotation_file,
                               f'{where}.segmentation')
                    continue
            if camera is None:
                from nlf_tf.data.camera import Camera
                camera = Camera.from_fov(FOV_DEGREES, (image['height'], image['width']))
            yield Example(
                dataset=dataset, category='kp2d', example_id=example_id, image_path=image_path,
                image=None, camera=camera, box=person['bbox'], joints2d=person['coords'],
                joints3d=None, mask_rle=mask_rle)


def box_of_points(points):
    """[x, y, w, h] bounding box of the finite 2D points (zeros if there are none)."""
    points = np.asarray(points, dtype=np.float64)
    points = points[np.all(np.isfinite(points), axis=1)]
    if len(points) == 0:
        return np.zeros(4, np.float32)
    lo, hi = points.min(axis=0), points.max(axis=0)
    return np.array([lo[0], lo[1], hi[0] - lo[0], hi[1] - lo[1]], np.float32)


def expand_box(box, factor):
    """Scales the box's width and height by `factor` about its centre."""
    x, y, w, h = np.asarray(box, dtype=np.float64)
    cx, cy = x + w / 2, y + h / 2
    return np.array([cx - w * factor / 2, cy - h * factor / 2, w * factor, h * factor], np.float32)


def box_iou(box1, box2):
    """Intersection over union of two [x, y, w, h] boxes (0 if the union is empty)."""
    x1, y1, w1, h1 = np.asarray(box1, dtype=np.float64)
    x2, y2, w2, h2 = np.asarray(box2, dtype=np.float64)
    iw = max(0.0, min(x1 + w1, x2 + w2) - max(x1, x2))
    ih = max(0.0, min(y1 + h1, y2 + h2) - max(y1, y2))
    inter = iw * ih
    union = w1 * h1 + w2 * h2 - inter
    return inter / union if union > 0 else 0.0


def segmentation_to_rle(segmentation, shape):
    """COCO `segmentation` (polygon list, uncompressed or compressed RLE) -> compressed RLE dict.

    Returns None for a missing/empty segmentation; raises ValueError if it is malformed or its
    size differs from the image's.
    """
    from nlf_tf.data import rle
    from nlf_tf.data.polygon import polygons_to_mask

    height, width = shape
    if segmentation is None or (isinstance(segmentation, list) and len(segmentation) == 0):
        return None
    if isinstance(segmentation, list):
        if not all(isinstance(p, (list, tuple)) for p in segmentation):
            raise ValueError('polygon segmentation must be a list of coordinate lists')
        return rle.encode(polygons_to_mask(segmentation, (height, width)))
    if isinstance(segmentation, dict):
        size = segmentation.get('size')
        if size is None or [int(v) for v in size] != [height, width]:
            raise ValueError(f'RLE size {size!r} differs from the image size {[height, width]}')
        mask = rle.decode(segmentation)  # also validates the counts
        counts = segmentation['counts']
        if isinstance(counts, (str, bytes)):
            counts = counts.decode('ascii') if isinstance(counts, bytes) else counts
            return {'size': [height, width], 'counts': counts}
        return rle.encode(mask)
    raise ValueError(f'segmentation must be a polygon list or an RLE dict, got '
                     f'{type(segmentation).__name__}')


class _Thresholds:
    def __init__(self, spec, spec_name):
        self.values = spec.get('thresholds')
        self.spec_name = spec_name
        if not isinstance(self.values, dict):
            raise ValueError(f'data spec {spec_name!r} has no "thresholds" object')

    def get(self, key):
        if key not in self.values:
            raise ValueError(f'data spec {self.spec_name!r} lacks thresholds.{key}')
        return float(self.values[key])


def _default_annotation_file(root_dir, split, year, wholebody):
    if not wholebody:
        return os.path.join(root_dir, 'annotations', f'person_keypoints_{split}{year}.json')
    name = f'coco_wholebody_{split}_v1.0.json'
    candidates = [os.path.join(root_dir, 'annotations', name), os.path.join(root_dir, name)]
    for path in candidates:
        if os.path.isfile(path):
            return path
    return candidates[0]


def _require(record, key, types, file, where):
    if key not in record:
        raise DatasetError(file, where, 'required field missing')
    value = record[key]
    allowed = types if isinstance(types, tuple) else (types,)
    # bool is an int subclass; accept it only where a flag is expected
    if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
        raise DatasetError(file, where, f'has the wrong type {type(value).__name__}')
    return value


def _parse_images(data, file):
    images = {}
    for i, image in enumerate(_require(data, 'images', list, file, 'images')):
        where = f'images[{i}]'
        if not isinstance(image, dict):
            raise DatasetError(file, where, 'must be an object')
        image_id = _require(image, 'id', (int, str), file, f'{where}.id')
        file_name = _require(image, 'file_name', str, file, f'{where}.file_name')
        height = _require(image, 'height', int, file, f'{where}.height')
        width = _require(image, 'width', int, file, f'{where}.width')
        if height <= 0 or width <= 0:
            raise DatasetError(file, f'{where}.height', f'image size must be positive, got '
                                                        f'{height}x{width}')
        images[image_id] = dict(file_name=file_name, height=height, width=width)
    return images


def _keypoint_array(ann, key, num_points, file, where):
    values = _require(ann, key, list, file, f'{where}.{key}')
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise DatasetError(file, f'{where}.{key}', 'must be a list of numbers') from None
    if array.shape != (num_points * 3,):
        raise DatasetError(file, f'{where}.{key}',
                           f'must hold {num_points}x3 = {num_points * 3} numbers, got {array.size}')
    return array.reshape(num_points, 3)


def _part_coords(ann, part, min_score, file, where):
    """One WholeBody part's coordinates, NaN unless the part is valid and the score > min_score."""
    points = _keypoint_array(ann, part['field'], part['count'], file, where)
    valid_field = part['valid_field']
    part_valid = _require(ann, valid_field, (bool, int), file, f'{where}.{valid_field}')
    coords = np.full((part['count'], 2), np.nan)
    if part_valid:
        # Part points with unusable (non-finite/negative) coordinates are dropped pointwise
        # rather than skipping the person (the 17 body points decide that).
        keep = ((points[:, 2] > min_score) & np.all(np.isfinite(points[:, :2]), axis=1)
                & np.all(points[:, :2] >= 0, axis=1))
        coords[keep] = points[keep, :2]
    return coords


def _spec_parts(spec, spec_name):
    """The WholeBody parts after the 17 body points, in joint-list order, from the spec."""
    parts = [p for p in spec.get('parts', ()) if p.get('name') != 'body']
    start = NUM_BODY_JOINTS
    for part in parts:
        if (not all(k in part for k in ('field', 'valid_field', 'start', 'count'))
                or part['start'] != start):
            raise ValueError(f'data spec {spec_name!r}: "parts" entries need field, valid_field, '
                             f'start, count and must follow each other; got {part}')
        start += part['count']
    if not parts:
        raise ValueError(f'data spec {spec_name!r} lacks the "parts" list')
    return parts


def _box(ann, file, where):
    values = _require(ann, 'bbox', list, file, f'{where}.bbox')
    try:
        box = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise DatasetError(file, f'{where}.bbox', 'must be 4 numbers') from None
    if box.shape != (4,):
        raise DatasetError(file, f'{where}.bbox', f'must be 4 numbers [x, y, w, h], got '
                                                  f'{box.size}')
    return box.astype(np.float32)
