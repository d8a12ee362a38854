import os

import numpy as np
import pytest
import tensorflow as tf

from nlf_tf.data import tfrecord
from nlf_tf.data.camera import Camera, rodrigues
from nlf_tf.data.example import DatasetError, Example


def _camera():
    k = np.array([[500.0, 0, 31.5], [0, 505.0, 23.5], [0, 0, 1]])
    return Camera(k, rodrigues([0.1, -0.3, 0.2]), [0.5, -1.0, 2.0], world_up=(0, 1, 0))


def _full_example():
    return Example(
        dataset='mads', category='kp3d', example_id='S1/seq#0', image_path=None,
        image=np.zeros((4, 4, 3), np.uint8), camera=_camera(), box=[1.5, 2.5, 30, 40],
        joints2d=np.array([[1, 2], [np.nan, np.nan], [5, 6]], np.float32),
        joints3d=np.array([[0.1, 0.2, 3], [0.4, 0.5, 3.1], [np.nan, np.nan, np.nan]], np.float32),
        dense_imcoords=np.array([[3, 4], [5, 6]], np.float32),
        dense_faces=np.array([[1, 2, 3], [6889, 0, 5]], np.int32),
        dense_barycoords=np.array([[0.2, 0.3, 0.5], [1, 0, 0]], np.float32),
        mask_rle={'size': [48, 64], 'counts': 'abc1'},
        dense_canonical=np.array([[0.1, -0.2, 0.3], [0, 0.5, -0.1]], np.float32)).validate()


def test_round_trip_all_fields_in_dataset_map():
    example = _full_example()
    record = tfrecord.serialize_example(example, b'\xff\xd8jpegbytes', 48, 64)
    ds = tf.data.Dataset.from_tensor_slices([record]).map(tfrecord.parse_example)
    parsed = {k: v.numpy() for k, v in next(iter(ds)).items()}
    assert set(parsed) == set(tfrecord.SCHEMA)
    assert parsed['dataset'] == b'mads' and parsed['category'] == b'kp3d'
    assert parsed['example_id'] == b'S1/seq#0'
    assert parsed['image_jpeg'] == b'\xff\xd8jpegbytes'
    assert (parsed['image_height'], parsed['image_width']) == (48, 64)
    np.testing.assert_allclose(parsed['intrinsics'], example.camera.intrinsic_matrix, rtol=1e-6)
    np.testing.assert_allclose(parsed['rotation'], example.camera.rot_world_to_cam, atol=1e-6)
    np.testing.assert_allclose(parsed['optical_center'], [0.5, -1.0, 2.0])
    np.testing.assert_array_equal(parsed['world_up'], [0, 1, 0])
    assert parsed['has_camera'] == 1 and parsed['num_joints'] == 3
    np.testing.assert_array_equal(parsed['box'], [1.5, 2.5, 30, 40])
    for name in ('joints2d', 'joints3d', 'dense_imcoords', 'dense_barycoords',
                 'dense_canonical'):
        assert parsed[name].dtype == np.float32
        np.testing.assert_array_equal(parsed[name], getattr(example, name))  # NaN == NaN here
    assert parsed['dense_faces'].dtype == np.int32
    np.testing.assert_array_equal(parsed['dense_faces'], example.dense_faces)
    assert parsed['mask_rle_counts'] == b'abc1'
    assert (parsed['mask_height'], parsed['mask_width']) == (48, 64)


def test_absent_fields_parse_to_empty_arrays_and_batch_shapes():
    example = Example(dataset='coco', category='kp2d', example_id='x', image_path='/a.jpg',
                      image=None, camera=Camera.from_fov(8, (48, 64)), box=[0, 0, 10, 10],
                      joints2d=np.zeros((17, 2), np.float32)).validate()
    record = tfrecord.serialize_example(example, b'j', 48, 64)
    parsed = tfrecord.parse_example(tf.constant(record))
    assert parsed['joints2d'].shape == (17, 2)
    assert parsed['joints3d'].shape == (0, 3)
    assert parsed['dense_imcoords'].shape == (0, 2)
    assert parsed['dense_faces'].shape == (0, 3)
    assert parsed['has_camera'].numpy() == 0
    assert parsed['mask_rle_counts'].numpy() == b''
    # inside a traced map function the fixed-size fields keep static shapes
    spec = tf.data.Dataset.from_tensors(record).map(tfrecord.parse_example).element_spec
    assert spec['intrinsics'].shape == (3, 3)
    assert spec['joints2d'].shape.as_list() == [None, 2]


def test_camera_from_parsed_projects_like_the_original():
    example = _full_example()
    parsed = tfrecord.parse_example(tf.constant(
        tfrecord.serialize_example(example, b'j', 48, 64)))
    camera = tfrecord.camera_from_parsed(parsed)
    points = np.array([[0.3, 0.1, 3.5], [-0.2, 0.4, 4.0]])
    np.testing.assert_allclose(camera.world_to_image(points),
                               example.camera.world_to_image(points), atol=1e-3)


def test_distorted_camera_is_refused():
    example = _full_example()
    example.camera = Camera(example.camera.intrinsic_matrix, distortion=[0.1, 0, 0, 0, 0])
    with pytest.raises(DatasetError, match='camera.distortion'):
        tfrecord.serialize_example(example, b'j', 48, 64)


def test_segments_truncate_and_concatenate(tmp_path):
    first = str(tmp_path / 'a.tfrecord.s0000.tmp')
    writer = tfrecord.SegmentWriter(first)
    writer.write(b'one')
    writer.write(b'two')
    committed = writer.flush()
    writer.write(b'lost')
    writer.close()
    os.truncate(first, committed)  # what a resumed job does
    second = str(tmp_path / 'a.tfrecord.s0001.tmp')
    writer = tfrecord.SegmentWriter(second)
    writer.write(b'three')
    writer.close()
    final = str(tmp_path / 'a.tfrecord')
    tfrecord.concatenate_atomically([first, second], final)
    assert tfrecord.read_records(final) == [b'one', b'two', b'three']
    assert not os.path.exists(final + '.tmp')


def _param_example(**overrides):
    params = dict(body_model='smplx_f', pose=np.linspace(-1, 1, 165), shape=np.arange(20) / 10,
                  trans=[0.5, -1.25, 3.0], expression=np.full(10, 0.3), kid_factor=0.75,
                  scale=1.1, is_shape_valid=False)
    params.update(overrides)
    return Example(dataset='agora', category='param', example_id='img#3', image_path=None,
                   image=np.zeros((4, 4, 3), np.uint8), camera=_camera(), box=[1, 2, 30, 40],
                   body_params=params).validate()


def test_param_record_round_trip():
    example = _param_example()
    record = tfrecord.serialize_example(example, b'j', 48, 64)
    ds = tf.data.Dataset.from_tensor_slices([record]).map(tfrecord.parse_example)
    parsed = {k: v.numpy() for k, v in next(iter(ds)).items()}
    assert parsed['category'] == b'param' and parsed['body_model'] == b'smplx_f'
    np.testing.assert_array_equal(parsed['pose'], np.linspace(-1, 1, 165).astype(np.float32))
    np.testing.assert_array_equal(parsed['shape'], (np.arange(20) / 10).astype(np.float32))
    np.testing.assert_array_equal(parsed['expression'], np.full(10, 0.3, np.float32))
    np.testing.assert_array_equal(parsed['trans'], [0.5, -1.25, 3.0])
    assert parsed['kid_factor'] == np.float32(0.75) and parsed['scale'] == np.float32(1.1)
    assert parsed['is_shape_valid'] == 0 and parsed['is_shape_valid'].dtype == np.int32
    for name in ('pose', 'shape', 'expression', 'trans', 'kid_factor', 'scale'):
        assert parsed[name].dtype == np.float32
    # Optional parameters get their defaults; a non-param example stores none.
    minimal = _param_example(expression=(), kid_factor=0, scale=1, is_shape_valid=True,
                             body_model='smplh_m', pose=np.zeros(156), shape=np.ones(10))
    parsed = tfrecord.parse_example(tf.constant(
        tfrecord.serialize_example(minimal, b'j', 48, 64)))
    assert parsed['body_model'].numpy() == b'smplh_m' and parsed['pose'].shape == (156,)
    assert parsed['expression'].shape == (0,) and parsed['is_shape_valid'].numpy() == 1
    parsed = tfrecord.parse_example(tf.constant(
        tfrecord.serialize_example(_full_example(), b'j', 48, 64)))
    assert parsed['body_model'].numpy() == b'' and parsed['pose'].shape == (0,)
    assert parsed['scale'].numpy() == 1.0


def test_bad_body_params_are_refused_when_serialising():
    example = _param_example()
    example.body_params = dict(example.body_params, body_model='smplx_q')
    with pytest.raises(DatasetError, match='body_params.body_model'):
        tfrecord.serialize_example(example, b'j', 48, 64)


def test_records_without_the_param_fields_still_parse():
    # A record as written before the parametric fields existed: drop them from the proto.
    proto = tf.train.Example.FromString(
        tfrecord.serialize_example(_full_example(), b'j', 48, 64))
    for name in ('body_model', 'pose', 'shape', 'expression', 'trans', 'kid_factor', 'scale',
                 'is_shape_valid'):
        del proto.features.feature[name]
    parsed = tfrecord.parse_example(tf.constant(proto.SerializeToString()))
    assert parsed['body_model'].numpy() == b''
    assert parsed['pose'].shape == (0,) and parsed['shape'].shape == (0,)
    assert parsed['expression'].shape == (0,)
    np.testing.assert_array_equal(parsed['trans'], [0, 0, 0])
    assert parsed['kid_factor'].numpy() == 0 and parsed['scale'].numpy() == 1
    assert parsed['is_shape_valid'].numpy() == 1
    np.testing.assert_array_equal(parsed['joints2d'], _full_example().joints2d)
