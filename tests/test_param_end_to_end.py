"""Synthetic AGORA / BEHAVE files -> reader -> nlf-tf-prepare -> pipeline -> trainer GT.

The GT points the trainer computes from the body models (grouped by kind, interpolated with
the sampled sparse weights) must (1) equal an independent NumPy forward pass of the example's
camera-frame parameters at those weights and (2) project, after the augmented crop warp, onto
the pixels where the fixture drew the people. For (2) each source image is replaced by the
fixture's own person mask (white person, black elsewhere), so a projected joint must land on a
white pixel of the warped crop.
"""

import glob
import os

import numpy as np
import pytest
import tensorflow as tf

from nlf_tf import config, parametric
from nlf_tf.body_models import canonical_assets, kinds, numpy_model, files, synthetic
from nlf_tf.body_models.tf_model import BodyModel
from nlf_tf.data import pipeline, prepare, readers, synthetic_agora, synthetic_behave

SIDE, P = 96, 160


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp('param_e2e')
    body_models = str(root / 'body_models')
    synthetic.write_synthetic_body_models(body_models, families=('smplh', 'smplx'))
    agora_root, behave_root = str(root / 'agora'), str(root / 'behave')
    synthetic_agora.write_agora(agora_root, 3, body_models, num_images=3)
    synthetic_behave.write_behave(behave_root, 4, body_models, frames_per_sequence=3)
    _paint_people_white(agora_root, behave_root)
    out = {}
    for name, folder in (('agora', agora_root), ('behave', behave_root)):
        out[name] = str(root / f'prepared_{name}')
        prepare.prepare_dataset(
            lambda name=name, folder=folder: readers.get_reader(name)(
                folder, split='train', body_model_dir=body_models),
            out[name], name, 'train', num_shards=1, log=lambda *a, **k: None)
    paths = canonical_assets.ensure_assets(body_models, families=['smplx', 'smplh'],
                                           num_interior=3000, log=lambda *a, **k: None)
    assets = {f: canonical_assets.load_assets(p, f) for f, p in paths.items()}
    return dict(body_models=body_models, prepared=out, assets=assets)


def _paint_people_white(agora_root, behave_root):
    # AGORA: the "all people" label image (_00000) is red (255, 0, 0) where nobody is.
    from nlf_tf.data import agora
    images = glob.glob(os.path.join(agora_root, 'train_*', '*.png'))
    assert images
    for image in images:
        scene, base = agora.mask_file_base(os.path.basename(image))
        label = os.path.join(agora_root, 'train', scene, f'{base}_00000.png')
        pixels = tf.io.decode_png(tf.io.read_file(label), channels=3).numpy()
        person = np.any(pixels != [255, 0, 0], axis=-1)
        assert tf.io.decode_png(tf.io.read_file(image)).shape[:2] == person.shape
        white = np.repeat(person[..., None] * np.uint8(255), 3, axis=-1)
        tf.io.write_file(image, tf.io.encode_png(white))
    # BEHAVE: k{i}.person_mask.jpg next to each k{i}.color.jpg.
    for mask in glob.glob(os.path.join(behave_root, 'sequences', '*', '*', 'k*.person_mask.jpg')):
        pixels = tf.io.decode_jpeg(tf.io.read_file(mask), channels=3)
        tf.io.write_file(mask.replace('person_mask', 'color'), tf.io.encode_jpeg(pixels))


def _cfg(**overrides):
    kw = dict(proc_side=SIDE, num_points=P, batch_size_parametric=6, batch_size=0,
              batch_size_densepose=0, batch_size_2d=0, color_aug=False, jpeg_aug_prob=0.0,
              occlude_aug_prob=0.0, seed=3)
    kw.update(overrides)
    return config.default_config(**kw)


def _batches(prepared, num_steps=2, **overrides):
    sources = [(name, 'param', sorted(glob.glob(os.path.join(folder, '*.tfrecord'))), w)
               for (name, folder), w in zip(sorted(prepared['prepared'].items()), (10, 5))]
    dataset = pipeline.make_training_dataset(
        _cfg(**overrides), sources, [], end_step=num_steps, param_assets=prepared['assets'])
    return [batch['param'] for batch in dataset]


def _body_models(prepared):
    return {k: BodyModel.from_dir(prepared['body_models'], kinds.family_of(k), k[-1])
            for f in prepared['assets'].values() for k in f['kinds']}


def test_gt_points_equal_the_numpy_body_model_at_the_sampled_weights(prepared):
    models = _body_models(prepared)
    seen = set()
    for param in _batches(prepared):
        gt, has_model = parametric.parametric_ground_truth(param, models)
        assert has_model.numpy().all()
        for i, kind_id in enumerate(param['body_model'].numpy()):
            kind = kinds.KINDS[kind_id]
            seen.add(kind)
            family = kinds.family_of(kind)
            model = files.load_body_model(prepared['body_models'], family, kind[-1])
            j = kinds.NUM_JOINTS[family]
            verts, joints = numpy_model.forward(
                model, param['pose'][i:i + 1, :3 * j].numpy(), param['shape'][i:i + 1].numpy(),
                param['expression'][i:i + 1].numpy(), param['kid_factor'][i].numpy(),
                param['trans'][i:i + 1].numpy())
            points = np.concatenate([verts[0], joints[0]]) * param['scale'][i].numpy()
            columns = param['interp_columns'][i].numpy()
            weights = param['interp_weights'][i].numpy()
            expected = np.einsum('pk,pkd->pd', weights, points[columns])
            np.testing.assert_allclose(gt[i].numpy(), expected, atol=2e-4)
            # The last J rows are the body-model joints themselves.
            np.testing.assert_allclose(gt[i, -j:].numpy(), joints[0] * param['scale'][i].numpy(),
                                       atol=2e-4)
            assert param['root_index'][i].numpy() == P - j
    assert {kinds.family_of(k) for k in seen} == {'smplx', 'smplh'}


def test_gt_joints_project_onto_the_drawn_people_after_the_crop_warp(prepared):
    models = _body_models(prepared)
    hits = total = 0
    for param in _batches(prepared, num_steps=3):
        gt, _ = parametric.parametric_ground_truth(param, models)
        image = param['image'].numpy()
        for i, kind_id in enumerate(param['body_model'].numpy()):
            j = kinds.NUM_JOINTS[kinds.family_of(kinds.KINDS[kind_id])]
            # The 22 body joints (fingers are thinner than a pixel at this size).
            joints = gt[i, P - j:P - j + 22].numpy()
            uvw = joints @ param['intrinsics'][i].numpy().T
            uv = np.round(uvw[:, :2] / uvw[:, 2:]).astype(int)
            inside = np.all((uv >= 1) & (uv < SIDE - 1), axis=1) & (uvw[:, 2] > 0)
            for u, v in uv[inside]:
                total += 1
                # On the person: some white pixel in the 3 x 3 neighbourhood (interpolated rims).
                hits += image[i, v - 1:v + 2, u - 1:u + 2].mean(-1).max() > 0.5
    assert total > 50
    assert hits / total > 0.9, (hits, total)
