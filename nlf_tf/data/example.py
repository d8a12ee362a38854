"""The records passed from dataset readers to `nlf-tf-prepare`: Example, Skip and DatasetError.

Readers yield `Example` (one person in one image) or `Skip` (a per-example problem that is
counted and reported, not fatal) and raise `DatasetError` for structural problems (a missing
file, malformed annotation file, missing required field) that stop the job.
"""

import dataclasses
import json
import os

import numpy as np

CATEGORIES = ('param', 'kp3d', 'dense', 'kp2d')


class DatasetError(ValueError):
    """A structural problem of the input data; the message names the file and the field."""

    def __init__(self, file, field, message):
        self.file = file
        self.field = field
        self.message = message
        super().__init__(f'{file}: field {field!r}: {message}')

    def __reduce__(self):  # keeps the exception picklable with its three arguments
        return type(self), (self.file, self.field, self.message)


@dataclasses.dataclass
class Skip:
    """An example left out, with the reason (counted per reason) and where the problem is."""
    example_id: str
    reason: str
    file: str = ''
    field: str = ''


@dataclasses.dataclass(eq=False)
class Example:
    """One person in one source image, all geometry in the SOURCE image frame.

    2D coordinates are pixels with pixel centres at integer coordinates, 3D coordinates are
    WORLD metres; NaN marks invalid points. `camera` is a `nlf_tf.data.camera.Camera`.
    """
    dataset: str
    category: str
    example_id: str
    image_path: str | None
    image: np.ndarray | None
    camera: object
    box: np.ndarray
    joints2d: np.ndarray | None = None
    joints3d: np.ndarray | None = None
    dense_imcoords: np.ndarray | None = None
    dense_faces: np.ndarray | None = None
    dense_barycoords: np.ndarray | None = None
    mask_rle: dict | None = None
    dense_canonical: np.ndarray | None = None
    # Parametric ground truth (category 'param'), WORLD frame; see `validate_body_params`.
    body_params: dict | None = None

    @property
    def source(self):
        """Where the example comes from, for messages: the image path or the example id."""
        return self.image_path if self.image_path else f'<{self.dataset} {self.example_id}>'

    @property
    def num_joints(self):
        for joints in (self.joints2d, self.joints3d):
            if joints is not None:
                return len(joints)
        return 0

    def validate(self):
        """Checks types and shapes; raises DatasetError naming the offending field.

        Returns self with arrays converted to their canonical dtypes (float32 / int32).
        """
        src = self.source
        for name in ('dataset', 'category', 'example_id'):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise DatasetError(src, name, 'must be a non-empty string')
        if self.category not in CATEGORIES:
            raise DatasetError(src, 'category', f'must be one of {CATEGORIES}, got '
                                                f'{self.category!r}')
        if (self.image_path is None) == (self.image is None):
            raise DatasetError(src, 'image_path',
                               'exactly one of image_path and image must be given')
        if self.image is not None:
            image = np.asarray(self.image)
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise DatasetError(src, 'image', f'must be uint8 [H, W, 3], got {image.dtype} '
                                                 f'{image.shape}')
            self.image = image
        if self.camera is None or not hasattr(self.camera, 'intrinsic_matrix'):
            raise DatasetError(src, 'camera', 'must be a nlf_tf.data.camera.Camera')
        self.box = _array(src, 'box', self.box, np.float32, (4,))
        if not np.all(np.isfinite(self.box)):
            raise DatasetError(src, 'box', f'must be finite, got {self.box}')
        self.joints2d = _array(src, 'joints2d', self.joints2d, np.float32, (None, 2))
        self.joints3d = _array(src, 'joints3d', self.joints3d, np.float32, (None, 3))
        if (self.joints2d is not None and self.joints3d is not None
                and len(self.joints2d) != len(self.joints3d)):
            raise DatasetError(src, 'joints3d', f'has {len(self.joints3d)} joints but joints2d '
                                                f'has {len(self.joints2d)}')
        self.dense_imcoords = _array(src, 'dense_imcoords', self.dense_imcoords, np.float32,
                                     (None, 2))
        n_dense = None if self.dense_imcoords is None else len(self.dense_imcoords)
        for name, dtype in (('dense_faces', np.int32), ('dense_barycoords', np.float32),
                            ('dense_canonical', np.float32)):
            value = _array(src, name, getattr(self, name), dtype, (n_dense, 3))
            if value is not None and n_dense is None:
                raise DatasetError(src, name, 'given without dense_imcoords')
            setattr(self, name, value)
        if self.body_params is not None:
            self.body_params = validate_body_params(src, self.body_params)
        elif self.category == 'param':
            raise DatasetError(src, 'body_params', 'a param example needs body_params')
        if self.mask_rle is not None:
            if (not isinstance(self.mask_rle, dict) or 'size' not in self.mask_rle
                    or 'counts' not in self.mask_rle):
                raise DatasetError(src, 'mask_rle',
                                   'must be a COCO RLE dict with "size" and "counts"')
        return self


BODY_PARAM_DEFAULTS = dict(expression=(), kid_factor=0.0, scale=1.0, is_shape_valid=True)


def validate_body_params(src, params):
    """Checks and normalises the body-model parameters of a param example.

    Keys: `body_model` (kind string, e.g. 'smplx_n', see `nlf_tf.body_models.kinds`), `pose`
    (axis-angle [3 J] of the family's J joints, global orientation first, hand poses absolute,
    i.e. any hand mean already added), `shape` (betas, at most kinds.SHAPE_SIZE), `trans` [3]
    (metres, WORLD frame: the body model's output plus `trans` is the person in the world frame
    of the example's camera, the global rotation acting about the rest-pose pelvis), and
    optional `expression` (at most kinds.EXPRESSION_SIZE), `kid_factor` (0), `scale` (1: world =
    scale x body-model output), `is_shape_valid` (True). Returns a new dict with float32 arrays,
    floats and a bool; raises DatasetError naming the field.
    """
    from nlf_tf.body_models import kinds

    if not isinstance(params, dict):
        raise DatasetError(src, 'body_params', 'must be a dict')
    for key in ('body_model', 'pose', 'shape', 'trans'):
        if key not in params:
            raise DatasetError(src, f'body_params.{key}', 'missing')
    unknown = set(params) - {'body_model', 'pose', 'shape', 'trans', *BODY_PARAM_DEFAULTS}
    if unknown:
        raise DatasetError(src, 'body_params', f'unknown keys {sorted(unknown)}')
    kind = params['body_model']
    if not isinstance(kind, str) or kind not in kinds.KINDS:
        raise DatasetError(src, 'body_params.body_model',
                           f'must be one of {", ".join(kinds.KINDS)}, got {kind!r}')
    num_joints = kinds.NUM_JOINTS[kinds.family_of(kind)]
    out = dict(BODY_PARAM_DEFAULTS, **params)
    out['pose'] = _array(src, 'body_params.pose', out['pose'], np.float32, (3 * num_joints,))
    out['trans'] = _array(src, 'body_params.trans', out['trans'], np.float32, (3,))
    for key, limit in (('shape', kinds.SHAPE_SIZE), ('expression', kinds.EXPRESSION_SIZE)):
        value = _array(src, f'body_params.{key}', np.reshape(out[key], [-1]), np.float32,
                       (None,))
        if len(value) > limit:
            raise DatasetError(src, f'body_params.{key}',
                               f'has {len(value)} values, at most {limit} are supported')
        out[key] = value
    for key in ('kid_factor', 'scale'):
        try:
            out[key] = float(out[key])
        except (TypeError, ValueError):
            raise DatasetError(src, f'body_params.{key}',
                               f'must be a number, got {out[key]!r}') from None
    for key in ('pose', 'shape', 'expression', 'trans', 'kid_factor', 'scale'):
        if not np.all(np.isfinite(out[key])):
            raise DatasetError(src, f'body_params.{key}', 'contains non-finite values')
    if not out['scale'] > 0:
        raise DatasetError(src, 'body_params.scale', f'must be > 0, got {out["scale"]}')
    out['is_shape_valid'] = bool(out['is_shape_valid'])
    return out


def _array(src, name, value, dtype, shape):
    if value is None:
        return None
    try:
        array = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as e:
        raise DatasetError(src, name, f'cannot be converted to {np.dtype(dtype).name}: {e}') \
            from None
    if array.ndim != len(shape) or any(
            want is not None and got != want for got, want in zip(array.shape, shape)):
        pretty = ', '.join('N' if s is None else str(s) for s in shape)
        raise DatasetError(src, name, f'must have shape [{pretty}], got {list(array.shape)}')
    return array


def load_json_object(path, field='file', missing='file not found',
                     not_object='top level must be a JSON object'):
    """Parses a JSON file whose top level must be an object; DatasetError naming the file and
    `field` when it is missing, malformed or of another shape."""
    if not os.path.isfile(path):
        raise DatasetError(path, field, missing)
    try:
        with open(path, encoding='utf-8') as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(path, field, f'malformed JSON: {e}') from e
    if not isinstance(data, dict):
        raise DatasetError(path, field, not_object)
    return data

