"""The TFRecord schema of prepared examples, (de)serialisation and an atomic sharded writer.

Every record is a `tf.train.Example` in the common schema below; all geometry is in the frame of
the STORED image (the prepared crop): `intrinsics` (row-major 3x3, pixels), `rotation` (row-major
3x3 world->camera), `optical_center` (world metres), `box` (x, y, w, h stored-image pixels),
`joints2d` (stored-image pixels), `joints3d` (WORLD metres, not moved by cropping), NaN marking
invalid points. Stored images have no lens distortion, so a homography maps them to any other
camera with the same optical centre.

Parametric examples (category 'param') also carry their body-model parameters in the WORLD frame
(the crop only changes the camera): `body_model` (kind string such as 'smplx_n', '' = none),
`pose` (3 J axis-angle), `shape`, `expression` (variable length), `trans` [3], `kid_factor`,
`scale`, `is_shape_valid` (see `nlf_tf.data.example.validate_body_params`). These fields were
added later with defaults (`FIELD_DEFAULTS`; variable-length ones parse as empty), so shards
written before them still parse and the schema version stayed 1 (the change is additive).
"""

import os

import numpy as np
import tensorflow as tf

SCHEMA_VERSION = 1

# name -> (kind, dtype, shape of the parsed tensor); kind 'fixed' has a fixed number of values,
# 'var' a variable number (stored flat, reshaped to `shape` with -1 for the count).
SCHEMA = {
    'dataset': ('fixed', tf.string, []),
    'category': ('fixed', tf.string, []),
    'example_id': ('fixed', tf.string, []),
    'image_jpeg': ('fixed', tf.string, []),
    'image_height': ('fixed', tf.int64, []),
    'image_width': ('fixed', tf.int64, []),
    'intrinsics': ('fixed', tf.float32, [3, 3]),
    'rotation': ('fixed', tf.float32, [3, 3]),
    'optical_center': ('fixed', tf.float32, [3]),
    'world_up': ('fixed', tf.float32, [3]),
    'has_camera': ('fixed', tf.int64, []),
    'box': ('fixed', tf.float32, [4]),
    'joints2d': ('var', tf.float32, [-1, 2]),
    'joints3d': ('var', tf.float32, [-1, 3]),
    'num_joints': ('fixed', tf.int64, []),
    'dense_imcoords': ('var', tf.float32, [-1, 2]),
    'dense_faces': ('var', tf.int64, [-1, 3]),
    'dense_barycoords': ('var', tf.float32, [-1, 3]),
    'dense_canonical': ('var', tf.float32, [-1, 3]),
    'mask_rle_counts': ('fixed', tf.string, []),
    'mask_height': ('fixed', tf.int64, []),
    'mask_width': ('fixed', tf.int64, []),
    'body_model': ('fixed', tf.string, []),
    'pose': ('var', tf.float32, [-1]),
    'shape': ('var', tf.float32, [-1]),
    'expression': ('var', tf.float32, [-1]),
    'trans': ('fixed', tf.float32, [3]),
    'kid_factor': ('fixed', tf.float32, []),
    'scale': ('fixed', tf.float32, []),
    'is_shape_valid': ('fixed', tf.int64, []),
}

# Values of fixed-size fields absent from a record (records written before these fields).
FIELD_DEFAULTS = {
    'body_model': b'',
    'trans': [0.0, 0.0, 0.0],
    'kid_factor': 0.0,
    'scale': 1.0,
    'is_shape_valid': 1,
}

# Categories whose examples carry a real 3D camera (the 2D datasets use a from_fov stand-in).
CATEGORIES_WITH_CAMERA = ('param', 'kp3d')


def _feature_spec():
    spec = {}
    for name, (kind, dtype, shape) in SCHEMA.items():
        if kind == 'fixed':
            spec[name] = tf.io.FixedLenFeature([int(np.prod(shape))] if shape else [], dtype,
                                               default_value=FIELD_DEFAULTS.get(name))
        else:
            spec[name] = tf.io.VarLenFeature(dtype)
    return spec


FEATURE_SPEC = _feature_spec()


def camera_arrays(camera):
    """(K [3,3], R [3,3], optical centre [3], world_up [3], distortion or None) of a Camera."""
    distortion = camera.distortion
    if distortion is not None:
        distortion = np.asarray(distortion, np.float64).reshape(-1)
        if distortion.size == 0 or not np.any(distortion):
            distortion = None
    return (np.asarray(camera.intrinsic_matrix, np.float32).reshape(3, 3),
            np.asarray(camera.rot_world_to_cam, np.float32).reshape(3, 3),
            np.asarray(camera.optical_center, np.float32).reshape(3),
            np.asarray(camera.world_up, np.float32).reshape(3),
            distortion)


def serialize_example(example, image_jpeg, image_height, image_width, has_camera=None):
    """Serialised `tf.train.Example` of an Example whose geometry is in the stored-image frame.

    `image_jpeg` are the stored image's encoded bytes (JPEG), `image_height`/`image_width` its
    size. The camera must have no distortion (the prepare step removes it). `has_camera`
    defaults to whether the category has real 3D cameras ('param', 'kp3d'). `body_params`
    (world frame) are validated and stored; without them the parametric fields get their
    defaults.
    """
    src = example.source
    intrinsics, rotation, center, world_up, distortion = camera_arrays(example.camera)
    if distortion is not None:
        from nlf_tf.data.example import DatasetError
        raise DatasetError(src, 'camera.distortion',
                           'stored examples must have an undistorted camera')
    if has_camera is None:
        has_camera = example.category in CATEGORIES_WITH_CAMERA
    mask_counts, mask_h, mask_w = b'', 0, 0
    if example.mask_rle is not None:
        counts = example.mask_rle['counts']
        if not isinstance(counts, (str, bytes)):
            from nlf_tf.data import rle
            counts = rle.counts_to_string(counts)
        mask_counts = counts.encode('ascii') if isinstance(counts, str) else bytes(counts)
        mask_h, mask_w = (int(v) for v in example.mask_rle['size'])
    params = dict(body_model='', pose=None, shape=None, expression=None,
                  trans=FIELD_DEFAULTS['trans'], kid_factor=FIELD_DEFAULTS['kid_factor'],
                  scale=FIELD_DEFAULTS['scale'], is_shape_valid=True)
    if example.body_params is not None:
        from nlf_tf.data.example import validate_body_params
        params.update(validate_body_params(src, example.body_params))

    def floats(x):
        x = np.asarray(x, np.float32).reshape(-1) if x is not None else np.zeros(0, np.float32)
        return tf.train.Feature(float_list=tf.train.FloatList(value=x.tolist()))

    def ints(x):
        x = np.asarray(x, np.int64).reshape(-1) if x is not None else np.zeros(0, np.int64)
        return tf.train.Feature(int64_list=tf.train.Int64List(value=x.tolist()))

    def text(x):
        x = x.encode('utf-8') if isinstance(x, str) else bytes(x)
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[x]))

    features = {
        'dataset': text(example.dataset),
        'category': text(example.category),
        'example_id': text(example.example_id),
        'image_jpeg': text(image_jpeg),
        'image_height': ints([image_height]),
        'image_width': ints([image_width]),
        'intrinsics': floats(intrinsics),
        'rotation': floats(rotation),
        'optical_center': floats(center),
        'world_up': floats(world_up),
        'has_camera': ints([int(bool(has_camera))]),
        'box': floats(example.box),
        'joints2d': floats(example.joints2d),
        'joints3d': floats(example.joints3d),
        'num_joints': ints([example.num_joints]),
        'dense_imcoords': floats(example.dense_imcoords),
        'dense_faces': ints(example.dense_faces),
        'dense_barycoords': floats(example.dense_barycoords),
        'dense_canonical': floats(example.dense_canonical),
        'mask_rle_counts': text(mask_counts),
        'mask_height': ints([mask_h]),
        'mask_width': ints([mask_w]),
        'body_model': text(params['body_model']),
        'pose': floats(params['pose']),
        'shape': floats(params['shape']),
        'expression': floats(params['expression']),
        'trans': floats(params['trans']),
        'kid_factor': floats([params['kid_factor']]),
        'scale': floats([params['scale']]),
        'is_shape_valid': ints([int(bool(params['is_shape_valid']))]),
    }
    assert set(features) == set(SCHEMA)
    proto = tf.train.Example(features=tf.train.Features(feature=features))
    return proto.SerializeToString()


def parse_example(serialized):
    """Dict of dense tensors from one serialised record; usable inside `tf.data.Dataset.map`.

    Strings stay tf.string (`image_jpeg` is the encoded image: the pipeline decodes it), integer
    fields are int32, float fields float32, with the shapes of `SCHEMA` (variable-length fields
    are [N], [N, 2] or [N, 3], N possibly 0; absent fixed-size fields get FIELD_DEFAULTS).
    """
    parsed = tf.io.parse_single_example(serialized, FEATURE_SPEC)
    result = {}
    for name, (kind, dtype, shape) in SCHEMA.items():
        value = parsed[name]
        if kind == 'var':
            value = tf.sparse.to_dense(value)
        if shape:
            value = tf.reshape(value, shape)
        if dtype == tf.int64:
            value = tf.cast(value, tf.int32)
        result[name] = value
    return result


def camera_from_parsed(features):
    """The stored camera (a `Camera`) from a parse_example result (tensors or NumPy)."""
    from nlf_tf.data.camera import Camera
    return Camera(intrinsic_matrix=np.asarray(features['intrinsics'], np.float64),
                  rot_world_to_cam=np.asarray(features['rotation'], np.float64),
                  optical_center=np.asarray(features['optical_center'], np.float64),
                  world_up=np.asarray(features['world_up'], np.float64))


def shard_name(dataset, split, index, num_shards):
    return f'{dataset}-{split}-{index:05d}-of-{num_shards:05d}.tfrecord'


def read_records(path):
    """All serialised records of one TFRecord file, as a list of bytes (eager; for tests/tools)."""
    return [r.numpy() for r in tf.data.TFRecordDataset(path)]


class SegmentWriter:
    """Writes records to a temporary segment file `<path>` and reports its committed size.

    `flush()` pushes everything written so far to the file so that its size can be recorded;
    a later run can truncate the file to that size and obtain a valid TFRecord file again
    (TFRecord files are a plain sequence of self-delimited records).
    """

    def __init__(self, path):
        self.path = path
        self._writer = tf.io.TFRecordWriter(path)
        self.num_records = 0

    def write(self, record):
        self._writer.write(record)
        self.num_records += 1

    def flush(self):
        self._writer.flush()
        return os.path.getsize(self.path)

    def close(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        return os.path.getsize(self.path)


def concatenate_atomically(segment_paths, final_path):
    """Joins TFRecord segment files into `final_path` via `<final_path>.tmp` + os.replace."""
    tmp_path = final_path + '.tmp'
    with open(tmp_path, 'wb') as out:
        for segment in segment_paths:
            with open(segment, 'rb') as f:
                while True:
                    chunk = f.read(1 << 22)
                    if not chunk:
                        break
                    out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp_path, final_path)
