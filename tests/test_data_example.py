import pickle

import numpy as np
import pytest

from nlf_tf.data.camera import Camera
from nlf_tf.data.example import DatasetError, Example, Skip


def _example(**changes):
    fields = dict(dataset='coco', category='kp2d', example_id='train/a.jpg#0',
                  image_path='/data/a.jpg', image=None, camera=Camera.from_fov(8, (40, 60)),
                  box=[1, 2, 30, 20], joints2d=[[1.0, 2.0], [np.nan, np.nan]])
    fields.update(changes)
    return Example(**fields)


def test_dataset_error_names_file_and_field_and_pickles():
    error = DatasetError('/data/ann.json', 'keypoints', 'missing')
    assert isinstance(error, ValueError)
    assert str(error) == "/data/ann.json: field 'keypoints': missing"
    assert (error.file, error.field, error.message) == ('/data/ann.json', 'keypoints', 'missing')
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error)


def test_skip_fields():
    skip = Skip('id#1', 'too few joints', 'ann.json', 'keypoints')
    assert (skip.example_id, skip.reason, skip.file, skip.field) == (
        'id#1', 'too few joints', 'ann.json', 'keypoints')
    assert Skip('id', 'r').file == ''


def test_validate_converts_dtypes_and_keeps_nan():
    example = _example(dense_imcoords=[[1, 2]], dense_faces=[[1, 2, 3]],
                       dense_barycoords=[[0.2, 0.3, 0.5]], dense_canonical=[[0.1, 0.2, 0.3]])
    assert example.validate() is example
    assert example.box.dtype == np.float32 and example.joints2d.dtype == np.float32
    assert example.dense_faces.dtype == np.int32
    assert np.isnan(example.joints2d[1]).all()
    assert example.num_joints == 2
    assert example.source == '/data/a.jpg'


@pytest.mark.parametrize('changes, field', [
    (dict(box=[1, 2, 3]), 'box'),
    (dict(box=[1, 2, np.inf, 3]), 'box'),
    (dict(category='3d'), 'category'),
    (dict(joints2d=[[1, 2, 3]]), 'joints2d'),
    (dict(image=np.zeros((4, 4, 3), np.uint8)), 'image_path'),
    (dict(image_path=None, image=np.zeros((4, 4), np.uint8)), 'image'),
    (dict(camera=None), 'camera'),
    (dict(dense_faces=[[1, 2, 3]]), 'dense_faces'),
    (dict(dense_imcoords=[[1, 2]], dense_barycoords=[[1, 0, 0], [0, 1, 0]]), 'dense_barycoords'),
    (dict(joints3d=[[0, 0, 1]] * 3), 'joints3d'),
    (dict(mask_rle={'counts': 'abc'}), 'mask_rle'),
])
def test_validate_errors_name_the_field(changes, field):
    example = _example(**changes)
    with pytest.raises(DatasetError) as info:
        example.validate()
    assert info.value.field == field
    assert info.value.file == example.source
