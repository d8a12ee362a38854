"""Param GT from body models (nlf_tf.parametric): grouping by kind, interpolation, order."""

import numpy as np
import pytest
import tensorflow as tf

from nlf_tf import parametric
from nlf_tf.body_models import kinds

V, J, P, KMAX = 7, 3, 6, 4


class _LinearBody:
    """A stand-in body model whose output is easy to compute by hand: vertices = template
    + pose[:3] x (vertex index) + shape[0] + trans, joints likewise with its own template."""

    def __init__(self, offset):
        rng = np.random.default_rng(offset)
        self.v = rng.normal(size=(V, 3)).astype(np.float32)
        self.j = rng.normal(size=(J, 3)).astype(np.float32)
        self.calls = 0

    def numpy(self, pose, shape, trans):
        n = np.arange(V)[:, None]
        verts = self.v + pose[:3] * n + shape[0] + trans
        joints = self.j + pose[:3] + shape[0] + trans
        return np.concatenate([verts, joints], 0)

    def __call__(self, pose, shape, expression, kid_factor, trans):
        self.calls += 1
        n = tf.range(V, dtype=tf.float32)[:, None]
        verts = (self.v + pose[:, None, :3] * n + shape[:, None, :1] + trans[:, None])
        joints = self.j + pose[:, None, :3] + shape[:, None, :1] + trans[:, None]
        return {'vertices': verts, 'joints': joints}


def _batch(rng, kind_names):
    b = len(kind_names)
    columns = rng.integers(0, V + J, size=(b, P, KMAX)).astype(np.int32)
    weights = rng.uniform(size=(b, P, KMAX)).astype(np.float32)
    weights[:, :, -1] = 0  # padding entry
    weights /= weights.sum(-1, keepdims=True)
    return dict(
        body_model=np.array([kinds.KINDS.index(k) if k in kinds.KINDS else -1
                             for k in kind_names], np.int32),
        pose=rng.normal(size=(b, kinds.POSE_SIZE)).astype(np.float32),
        shape=rng.normal(size=(b, kinds.SHAPE_SIZE)).astype(np.float32),
        expression=np.zeros((b, kinds.EXPRESSION_SIZE), np.float32),
        trans=rng.normal(size=(b, 3)).astype(np.float32),
        kid_factor=np.zeros(b, np.float32),
        scale=rng.uniform(0.8, 1.2, size=b).astype(np.float32),
        interp_columns=columns, interp_weights=weights,
        point_validity=np.ones((b, P), bool))


def _expected(batch, models, kind_names):
    out = np.zeros((len(kind_names), P, 3), np.float32)
    for i, name in enumerate(kind_names):
        if name not in models:
            continue
        points = models[name].numpy(batch['pose'][i], batch['shape'][i], batch['trans'][i])
        points = points * batch['scale'][i]
        dense = np.zeros((P, V + J), np.float32)  # the sparse matrix written out densely
        for p in range(P):
            for k in range(KMAX):
                dense[p, batch['interp_columns'][i, p, k]] += batch['interp_weights'][i, p, k]
        out[i] = dense @ points
    return out


@pytest.mark.parametrize('static_shapes', [False, True])
def test_grouping_restores_the_batch_order(static_shapes):
    rng = np.random.default_rng(0)
    # Interleaved kinds, one kind without a model and a placeholder (-1).
    names = ['smplx_n', 'smplh_f', 'smplx_n', 'smpl_m', 'smplh_f', 'none', 'smplx_f']
    models = {'smplx_n': _LinearBody(1), 'smplh_f': _LinearBody(2), 'smplx_f': _LinearBody(3)}
    batch = _batch(rng, names)
    got, has_model = parametric.parametric_ground_truth(batch, models, static_shapes)
    np.testing.assert_allclose(got.numpy(), _expected(batch, models, names), atol=1e-5)
    assert has_model.numpy().tolist() == [n in models for n in names]
    assert not np.any(got.numpy()[[3, 5]])  # no model: zeros


def test_each_loaded_model_runs_once_per_batch_when_grouped():
    rng = np.random.default_rng(1)
    models = {'smplx_n': _LinearBody(1), 'smplh_m': _LinearBody(2)}
    batch = _batch(rng, ['smplx_n', 'smplx_n', 'smplh_m'])
    parametric.parametric_ground_truth(batch, models)
    assert [m.calls for m in models.values()] == [1, 1]


def test_empty_group_and_empty_batch():
    rng = np.random.default_rng(2)
    models = {'smplx_n': _LinearBody(1), 'smplh_m': _LinearBody(2)}
    batch = _batch(rng, ['smplx_n'])
    got, _ = parametric.parametric_ground_truth(batch, models)  # smplh_m group is empty
    np.testing.assert_allclose(got.numpy(), _expected(batch, models, ['smplx_n']), atol=1e-5)
    empty = {k: v[:0] for k, v in batch.items()}
    got, has_model = parametric.parametric_ground_truth(empty, models)
    assert got.shape == (0, P, 3) and has_model.shape == (0,)


def test_no_gradient_flows_into_the_ground_truth():
    rng = np.random.default_rng(3)
    models = {'smplx_n': _LinearBody(1)}
    batch = _batch(rng, ['smplx_n', 'smplx_n'])
    trans = tf.Variable(batch['trans'])
    with tf.GradientTape() as tape:
        got, _ = parametric.parametric_ground_truth(dict(batch, trans=trans), models)
        total = tf.reduce_sum(got)
    assert tape.gradient(total, trans) is None


def test_unknown_kind_name_is_refused():
    with pytest.raises(ValueError, match='unknown body-model kinds'):
        parametric.parametric_ground_truth(_batch(np.random.default_rng(0), ['smplx_n']),
                                           {'smplz_n': _LinearBody(1)})


def test_graph_mode_with_unknown_batch_size():
    rng = np.random.default_rng(4)
    models = {'smplx_n': _LinearBody(1), 'smplh_f': _LinearBody(2)}
    names = ['smplh_f', 'smplx_n', 'smplh_f']
    batch = _batch(rng, names)
    spec = {k: tf.TensorSpec([None] + list(np.shape(v)[1:]), tf.as_dtype(np.asarray(v).dtype))
            for k, v in batch.items()}
    fn = tf.function(lambda b: parametric.parametric_ground_truth(b, models)[0],
                     input_signature=[spec])
    np.testing.assert_allclose(fn(batch).numpy(), _expected(batch, models, names), atol=1e-5)


def test_trainer_prepare_inputs_uses_the_body_models():
    from test_trainer import make_batch, make_trainer
    rng = np.random.default_rng(5)
    data = make_batch(rng, p=P)
    names = ['smplx_n', 'none']
    param = _batch(rng, names)
    data['param'] = dict(data['param'], **param, root_index=np.full(2, P - 1, np.int32))
    del data['param']['coords3d_true']
    models = {'smplx_n': _LinearBody(1)}
    trainer, _ = make_trainer()
    object.__setattr__(trainer, 'body_models', models)
    inps = trainer.prepare_inputs(data)
    np.testing.assert_allclose(inps.param.coords3d_true.numpy(),
                               _expected(param, models, names), atol=1e-5)
    # The example without a body model carries no valid point.
    assert inps.param.point_validity.numpy()[0].all()
    assert not inps.param.point_validity.numpy()[1].any()
