"""`NLFTrainer`: the Keras model that trains an NLF model on four-category batches.

It owns what the original's fleras `ModelTrainer` + `NLFTrainer` did: the micro-step counter,
input preparation (canonical lookup, stacking, GT visibility), the forward pass with in-model
random mirroring, absolute reconstruction (weak perspective before adjusted step 500, full
perspective from then on), losses, metrics, and an exact gradient accumulation.
The batch format is documented in `nlf_tf.batch` terms in the README ("Batch format").
"""

import easydict
import keras
import tensorflow as tf

from nlf_tf import geometry, losses as losses_lib, metrics as metrics_lib, parametric, reconstruction

CATEGORIES = ('param', 'kp3d', 'dense', 'kp2d')
# Adjusted step from which the full-perspective solver replaces the weak-perspective one.
FULL_PERSPECTIVE_START_STEP = 500


class NLFTrainer(keras.Model):
    """Trains `model` (an `nlf_tf.model.NLFModel`-like object) with the settings in `cfg`.

    Args:
      model: provides `backbone`, `heatmap_head`, `canonical_locs()` and Keras `losses`
        (regularisation).
      cfg: an EasyDict of settings (see `nlf_tf.config`).
      pca_term: optional `nlf_tf.pca_training.PCATerm`.
      body_models: {kind name: body model} (`nlf_tf.body_models.tf_model.BodyModel`) used to
        compute the GT points of param sub-batches that carry body-model parameters (see
        `nlf_tf.parametric`); param sub-batches with ready-made `coords3d_true` need none.
    """

    def __init__(self, model, cfg, pca_term=None, body_models=None, **kwargs):
        super().__init__(**kwargs)
        self.model = model
        # Plain attribute: Keras would turn a dict attribute into a tracked dict without the
        # attribute-style access the loss code uses.
        object.__setattr__(self, 'cfg', easydict.EasyDict(cfg))
        self.grad_accum_steps = int(self.cfg.grad_accum_steps)
        if self.grad_accum_steps < 1:
            raise ValueError(f'grad_accum_steps must be >= 1, got {self.grad_accum_steps}')
        # Keras 3 has no step counter that counts micro-batches; this one is checkpointed.
        self.train_counter = keras.Variable(
            0, dtype='int64', trainable=False, name='train_counter')
        self._accumulators = None
        self._seed_states = None
        # Number of times train_step was traced (a retracing check for tests and benchmarks).
        self.train_step_traces = 0
        # Optional `nlf_tf.pca_training.PCATerm` (its weighted loss joins the total).
        self.pca_term = pca_term
        # Untracked: the body models are constants, not part of checkpoints or exports.
        object.__setattr__(self, 'body_models', dict(body_models or {}))

    # ------------------------------------------------------------------------------------
    # Building
    # ------------------------------------------------------------------------------------

    def build_for_training(self, example_batch):
        """Creates every variable (model, optimizer, accumulators) from one example batch, so
        that a checkpoint can be restored before the first step and Keras skips its symbolic
        build."""
        inps = self.prepare_inputs(example_batch)
        self.forward_train(inps, training=False)
        if self.optimizer is not None and not self.optimizer.built:
            self.optimizer.build(self.model.trainable_variables)
        if self.grad_accum_steps > 1 and self._accumulators is None:
            # Replica-local sums of the replica's own gradients (on_read): under a strategy
            # they are all-reduced once per update by the optimizer. 'mean' aggregation makes
            # a checkpoint hold their mean and a restore give every replica that mean, so the
            # all-reduced sum is unchanged by a resume on the same number of replicas.
            self._accumulators = [
                keras.Variable(tf.zeros(v.shape, tf.float32), trainable=False,
                               name='grad_accumulator', synchronization='on_read',
                               aggregation='mean')
                for v in self.model.trainable_variables]
        self._seed_states = [
            v for v in self.model.non_trainable_variables if 'seed_generator_state' in v.path]
        self.built = True

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Under a distribution strategy Keras would mean-reduce a distributed batch (this fails
        # on the bool masks) to build the model symbolically; `build_for_training` has already
        # created every variable, so there is nothing to build.
        if self.built and (self.optimizer is None or self.optimizer.built):
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    # ------------------------------------------------------------------------------------
    # Counters
    # ------------------------------------------------------------------------------------

    def adjusted_train_counter(self):
        """Index of the optimizer update the current micro-batch belongs to."""
        return self.train_counter // self.grad_accum_steps

    def _step_key(self):
        """Stateless RNG key from (seed, adjusted step), with the micro-step folded in, so a
        resumed run draws the same random numbers as an uninterrupted one.

        Under a strategy with R replicas, replica r of micro-step m uses the index m·R + r:
        replicas draw different numbers, and R replicas with n accumulation steps draw exactly
        what one device with n·R accumulation steps draws for the same examples."""
        n = self.grad_accum_steps
        base = tf.cast(tf.stack([tf.cast(self.cfg.seed, tf.int64),
                                 self.adjusted_train_counter()]), tf.int64)
        index = self.train_counter % n
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        replica_context = tf.distribute.get_replica_context()
        if replicas > 1 and replica_context is not None:  # None: cross-replica (building)
            replica_id = replica_context.replica_id_in_sync_group
            index = index * replicas + tf.cast(replica_id, tf.int64)
        return tf.random.experimental.stateless_fold_in(base, index)

    def _reseed_stochastic_layers(self, key):
        # Keras seed-generator states (dropout, stochastic depth) are not checkpointed;
        # setting them from the step key makes them resume deterministically as well.
        for i, state in enumerate(self._seed_states or []):
            new = tf.random.experimental.stateless_fold_in(key, 1000 + i)
            state.assign(tf.cast(new, state.dtype))

    # ------------------------------------------------------------------------------------
    # Input preparation and forward pass
    # ------------------------------------------------------------------------------------

    def prepare_inputs(self, inps):
        """Canonical points, stacked tensors and GT visibility of a four-category batch."""
        cfg = self.cfg
        inps = easydict.EasyDict({c: easydict.EasyDict(inps[c]) for c in CATEGORIES})
        param = inps.param
        if parametric.has_body_model_params(param):
            # GT points = the posed body model interpolated at the sampled points (NLF forwards
            # the body models inside the step, grouped by kind); XLA needs static shapes.
            param.coords3d_true, has_model = parametric.parametric_ground_truth(
                param, self.body_models, static_shapes=bool(cfg.get('jit_compile')))
            param.point_validity = tf.logical_and(
                tf.cast(param.point_validity, tf.bool), has_model[:, tf.newaxis])
        canonical_locs = tf.cast(self.model.canonical_locs(), tf.float32)
        for c in CATEGORIES:
            part = inps[c]
            point_ids = tf.cast(part.point_ids, tf.int32)
            looked_up = tf.gather(canonical_locs, tf.maximum(point_ids, 0), axis=0)
            part.canonical_points = tf.where(
                (point_ids >= 0)[..., tf.newaxis], looked_up,
                tf.cast(part.canonical_points, tf.float32))
            part.point_validity = tf.cast(part.point_validity, tf.bool)

        def stack(name):
            return tf.concat([inps[c][name] for c in CATEGORIES], axis=0)

        inps.image = stack('image')
        inps.intrinsics = tf.cast(stack('intrinsics'), tf.float32)
        inps.canonical_points_tensor = stack('canonical_points')
        inps.point_validity_mask = stack('point_validity')
        min_depth = cfg.min_depth
        inps.coords2d_true = tf.concat([
            geometry.project_pose(inps.param.coords3d_true, inps.param.intrinsics, min_depth),
            geometry.project_pose(inps.kp3d.coords3d_true, inps.kp3d.intrinsics, min_depth),
            inps.dense.coords2d_true, inps.kp2d.coords2d_true], axis=0)
        # Points behind the camera are not visible and must not steer the translation solve.
        is_in_front_true = tf.concat([
            inps.param.coords3d_true[..., 2] > 0.001, inps.kp3d.coords3d_true[..., 2] > 0.001,
            tf.ones_like(inps.dense.coords2d_true[..., 0], dtype=tf.bool),
            tf.ones_like(inps.kp2d.coords2d_true[..., 0], dtype=tf.bool)], axis=0)
        # Half a stride inside the border: the head cannot output positions closer to the edge.
        inps.is_within_fov_true = tf.logical_and(tf.logical_and(
            geometry.is_within_fov(inps.coords2d_true, 0.5, **losses_lib.fov_kwargs(cfg)),
            inps.point_validity_mask), is_in_front_true)
        return inps

    def forward_train(self, inps, training, key=None):
        """Predictions per category (coords3d_abs, uncert) for a prepared batch."""
        cfg = self.cfg
        if key is None:
            key = self._step_key()
        flip_key, mix_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
        image = inps.image
        canonical_points = inps.canonical_points_tensor
        batch_size = tf.shape(image)[0]

        # Random horizontal mirroring inside the model: mirror the image and the canonical
        # query points' x; un-mirror the outputs afterwards.
        flip_mask = tf.random.stateless_uniform([batch_size, 1, 1], flip_key) > 0.5
        image = tf.where(flip_mask[..., tf.newaxis], tf.image.flip_left_right(image), image)
        mirror = tf.constant([-1, 1, 1], tf.float32)
        canonical_points = tf.where(flip_mask, canonical_points * mirror, canonical_points)

        features = self.model.backbone(tf.cast(image, self.model.compute_dtype), training=training)
        head2d, head3d, uncert = self.model.heatmap_head(
            features, canonical_points, training=training)
        head3d = tf.where(flip_mask, head3d * mirror, head3d)
        head2d = tf.where(
            flip_mask,
            tf.concat([cfg.proc_side - 1 - head2d[..., :1], head2d[..., 1:]], axis=-1), head2d)

        if training:
            mix_3d_inside_fov = tf.random.stateless_uniform([batch_size, 1, 1], mix_key)
        else:
            mix_3d_inside_fov = cfg.mix_3d_inside_fov

        validity = inps.is_within_fov_true
        if cfg.nll_loss:
            # Early in training the uncertainties are meaningless; later, uncertain points are
            # kept out of the translation solve.
            is_early = tf.cast(self.adjusted_train_counter(), tf.float32) < tf.cast(
                0.1 * cfg.training_steps, tf.float32)
            validity = tf.logical_and(validity, tf.logical_or(is_early, uncert < 0.3))
        coords3d_abs = self.reconstruct_absolute(
            head2d, head3d, inps.intrinsics, mix_3d_inside_fov, validity)

        sizes = [tf.shape(inps[c].image)[0] for c in CATEGORIES]
        preds = easydict.EasyDict({c: easydict.EasyDict() for c in CATEGORIES})
        for c, coords, u in zip(CATEGORIES, tf.split(coords3d_abs, sizes, axis=0),
                                tf.split(uncert, sizes, axis=0)):
            preds[c].coords3d_abs = coords
            preds[c].uncert = u
        preds.head2d = head2d
        preds.head3d = head3d
        preds.uncert = uncert
        preds.coords3d_abs = coords3d_abs
        return preds

    def reconstruct_absolute(self, head2d, head3d, intrinsics, mix_3d_inside_fov,
                             point_validity_mask=None):
        """Weak perspective before adjusted step 500, full perspective from then on."""
        cfg = self.cfg
        kwargs = dict(
            mix_3d_inside_fov=mix_3d_inside_fov, point_validity_mask=point_validity_mask,
            border_factor1=1, border_factor2=0.55, mix_based_on_3d=False,
            fullpersp_l2_regul=cfg.fullpersp_l2_regul, min_depth=cfg.min_depth,
            **{k: v for k, v in losses_lib.fov_kwargs(cfg).items()})
        return tf.cond(
            self.adjusted_train_counter() < FULL_PERSPECTIVE_START_STEP,
            lambda: reconstruction.reconstruct_absolute(
                head2d, head3d, intrinsics, weak_perspective=True, **kwargs),
            lambda: reconstruction.reconstruct_absolute(
                head2d, head3d, intrinsics, weak_perspective=False, **kwargs))

    # ------------------------------------------------------------------------------------
    # Losses and metrics
    # ------------------------------------------------------------------------------------

    def compute_loss_with_3d_gt(self, inps, preds):
        """(EasyDict(loss3d, loss3d_abs, loss2d), total) of a sub-batch with 3D GT."""
        return losses_lib.compute_loss_with_3d_gt(
            inps, preds, self.cfg, self.adjusted_train_counter())

    def compute_loss_with_2d_gt(self, inps, preds):
        return losses_lib.compute_loss_with_2d_gt(inps, preds, self.cfg)

    def compute_losses(self, inps, preds):
        losses = losses_lib.compute_losses(inps, preds, self.cfg, self.adjusted_train_counter())
        for name, value in losses.items():
            tf.debugging.assert_all_finite(value, f'Nonfinite {name}!')
        return losses

    def compute_metrics(self, inps, preds, training=True):
        return metrics_lib.compute_metrics(inps, preds, self.cfg, training)

    # ------------------------------------------------------------------------------------
    # Steps
    # ------------------------------------------------------------------------------------

    def train_step(self, data):
        # Runs in Python only while the step is traced (once per replica under a strategy).
        self.train_step_traces += 1
        key = self._step_key()
        self._reseed_stochastic_layers(key)
        clipping = getattr(self.model, 'renorm_clipping', None)
        if clipping is not None:
            clipping.update(self.adjusted_train_counter())
        training = True
        with tf.GradientTape() as tape:
            inps = self.prepare_inputs(data)
            preds = self.forward_train(inps, training=training, key=key)
            losses = self.compute_losses(inps, preds)
            pca_logs = {}
            if self.pca_term is not None:
                pca_logs = self.pca_term(inps, preds)
                losses.loss = losses.loss + pca_logs[
                    f'train_{self.pca_term.loss_name}_loss_weighted']
            regularization = self.model.losses
            if regularization:
                losses.loss = losses.loss + tf.add_n(
                    [tf.cast(r, tf.float32) for r in regularization])
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            loss_for_grad = losses.loss / replicas
            scaled_loss = self.optimizer.scale_loss(loss_for_grad)
        tf.debugging.assert_all_finite(losses.loss, 'Nonfinite loss!')
        variables = self.model.trainable_variables
        grads = tape.gradient(scaled_loss, variables)
        grads = [tf.zeros_like(v) if g is None else g for g, v in zip(grads, variables)]
        self._apply_or_accumulate(grads, variables)
        self.train_counter.assign_add(1)

        logs = dict(losses)
        logs.update(pca_logs)
        logs.update(self.compute_metrics(inps, preds, training=True))
        logs['learning_rate'] = self._current_learning_rate()
        logs['loss_scale'] = self._current_loss_scale()
        return _reducible_across_workers(logs)

    def _apply_or_accumulate(self, grads, variables):
        n = self.grad_accum_steps
        if n == 1:
            self.optimizer.apply(grads, variables)
            return
        # Exact accumulation: the optimizer sees the mean of the n micro-gradients once per
        # update, so its iteration counter (and thus the LR schedule and Adam's bias
        # correction) runs in optimizer steps.
        k = self.train_counter
        is_first = tf.equal(k % n, 0)
        for acc, g in zip(self._accumulators, grads):
            acc.assign(tf.where(is_first, tf.cast(g, tf.float32), acc + tf.cast(g, tf.float32)))

        def apply():
            self.optimizer.apply([acc / n for acc in self._accumulators], variables)
            return tf.constant(True)

        is_last = tf.equal((k + 1) % n, 0)
        replica_context = tf.distribute.get_replica_context()
        if replica_context is None or not tf.distribute.has_strategy():
            tf.cond(is_last, apply, lambda: tf.constant(False))
            return
        # Under a strategy the optimizer all-reduces inside `apply` (a merge_call), which
        # tf.distribute does not allow inside a tf.cond in replica context. So the condition
        # is taken in cross-replica context (every replica has the same counter) and the
        # update runs as a replica function of its own in the taken branch.
        def merge_fn(strategy, is_last):
            is_last = strategy.experimental_local_results(is_last)[0]

            def apply_on_replicas():
                strategy.run(apply)
                return tf.constant(True)

            tf.cond(is_last, apply_on_replicas, lambda: tf.constant(False))

        replica_context.merge_call(merge_fn, args=(is_last,))

    def _base_optimizer(self):
        return getattr(self.optimizer, 'inner_optimizer', self.optimizer)

    def _current_learning_rate(self):
        opt = self._base_optimizer()
        lr = opt.learning_rate
        return tf.cast(lr, tf.float32)

    def _current_loss_scale(self):
        opt = self.optimizer
        if hasattr(opt, 'dynamic_scale'):
            return tf.cast(opt.dynamic_scale, tf.float32)
        factor = getattr(opt, 'loss_scale_factor', None)
        return tf.constant(float(factor) if factor else 1.0, tf.float32)

    def test_step(self, data):
        inps = self.prepare_inputs(data)
        preds = self.forward_train(inps, training=False)
        return _reducible_across_workers(dict(self.compute_metrics(inps, preds, training=False)))

    def predict_batch_for_summary(self, data):
        """Test-mode predictions of a batch: per-category 2D GT and predicted projections."""
        inps = self.prepare_inputs(data)
        preds = self.forward_train(inps, training=False)
        pred2d = geometry.project_pose(preds.coords3d_abs, inps.intrinsics, self.cfg.min_depth)
        return inps.image, inps.coords2d_true, pred2d, inps.point_validity_mask

    def call(self, inputs, training=False):
        return self.model(inputs, training=training)


def _reducible_across_workers(logs):
    """Keras averages the logs of a multi-worker strategy with `strategy.reduce(MEAN, v,
    axis=0)`, which rejects scalars: there, each value becomes a [1] vector (the mean over
    workers of those is the scalar mean). Elsewhere the logs are returned unchanged."""
    strategy = tf.distribute.get_strategy()
    if not (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            and strategy.extended._in_multi_worker_mode()):
        return logs
    return {k: tf.reshape(v, [1]) for k, v in logs.items()}
