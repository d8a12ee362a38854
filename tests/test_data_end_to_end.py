"""A native-format COCO folder → nlf-tf-prepare → nlf-tf-train on the prepared records."""

import glob
import os

import numpy as np
import pytest
import tensorflow as tf

from nlf_tf import config, training
from nlf_tf.data import prepare, readers
from test_data_coco import annotation, body_keypoints, write_coco

H, W = 240, 320


def _coco_folder(root):
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(4):
        name = f'im{i}.jpg'
        images.append(dict(id=i + 1, file_name=name, width=W, height=H))
        anns.append(annotation(i + 1, i + 1, body_keypoints(60 + 10 * i, 20, 120, 200),
                               bbox=(50 + 10 * i, 15, 140, 210)))
    write_coco(str(root), anns, images=images, write_images=False)
    for image in images:
        path = os.path.join(str(root), 'train2014', image['file_name'])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        pixels = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
        tf.io.write_file(path, tf.io.encode_jpeg(pixels))


def test_prepare_then_train_on_prepared_coco(tmp_path):
    root, out = tmp_path / 'coco', tmp_path / 'prepared_coco'
    _coco_folder(root)
    manifest = prepare.prepare_dataset(
        lambda: readers.get_reader('coco')(str(root), split='train', year=2014),
        str(out), 'coco', 'train', num_shards=2, log=lambda *a, **k: None)
    assert manifest['num_examples'] == 4 and manifest['category'] == 'kp2d'

    cfg = config.default_config(
        data='prepared', prepared_dirs=str(out), logdir=str(tmp_path / 'run'), training_steps=2,
        log_period=1, image_summary_period=0, checkpoint_period=2, proc_side=64,
        backbone='mobilenetv3small', dtype='float32', batch_size_parametric=0, batch_size=0,
        batch_size_densepose=0, batch_size_2d=2, num_points=24, backbone_link_dim=8,
        field_posenc_dim=16, field_hidden_size=16, verbose=0)
    trainer = training.run_training(cfg)
    assert int(trainer.train_counter.numpy()) == 2
    # The run's joint table is COCO's, with suffixed names.
    assert trainer.model.joint_names[0] == 'nose_coco'
    tags = set()
    for path in glob.glob(os.path.join(cfg.logdir, 'events.out.tfevents.*')):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(v.tag for v in event.summary.value)
    assert {'loss_2dbatch', 'mean_error_px_2d', 'skipped_records_kp2d'} <= tags


def test_prepared_data_errors_name_the_flag(tmp_path):
    base = dict(data='prepared', logdir=str(tmp_path / 'run'), training_steps=2, proc_side=64,
                backbone='mobilenetv3small', dtype='float32', verbose=0)
    with pytest.raises(training.ConfigError, match='--prepared_dirs'):
        training.run_training(config.default_config(**base))
    with pytest.raises(training.ConfigError, match='manifest.json'):
        training.run_training(config.default_config(prepared_dirs=str(tmp_path), **base))
    from nlf_tf import data_sources
    with pytest.raises(data_sources.DataConfigError, match='dataset_weights'):
        data_sources.parse_weights('coco=3')
    assert data_sources.parse_weights('mads:2, coco:4') == {'mads': 2.0, 'coco': 4.0}
