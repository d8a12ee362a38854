"""Keras port of lightning-pose's PCA keypoint-consistency loss (``PCALoss``).

``pca_singleview`` penalises poses that leave a low-dimensional linear subspace fitted to
the training labels; ``pca_multiview`` penalises body parts whose (x, y) in the V views
are inconsistent with one 3D point. Numerically equal to lightning-pose 2.4.3; the fit
is in :mod:`nlf_tf.pca_fit` (NumPy, float64 where upstream uses it).

Differences from upstream, all deliberate:

* The labels (``data_module``) are an array or ``tf.data.Dataset`` of training labels that
  **must be in the same pixel frame as the predictions** (upstream fits in resized
  model-input pixels but evaluates video-frame pixels).
* ``nan_policy="raise"`` (default) rejects degenerate fits with clear messages;
  ``nan_policy="propagate"`` reproduces upstream exactly (NaN propagates).
* The fitted parameters are non-trainable weights and part of ``get_config``, so a saved
  model reloads without refitting.
* ``coords_dim=3`` allows single-view 3D keypoints.
* ``device`` is accepted and ignored (TF places the computation).
* The loss is returned unweighted; the training code multiplies it by :attr:`weight`.
"""

from __future__ import annotations

import logging
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from nlf_tf import pca_fit
from nlf_tf.pca_fit import (
    KeypointPCA,
    PCAAssertionError,
    PCAFitResult,
    labels_from_source,
)

logger = logging.getLogger(__name__)

__all__ = ["PCALoss", "KeypointPCA", "PCAFitResult", "labels_from_source", "safe_norm"]

# Keras Layer arguments forwarded to the base class; every other extra kwarg is ignored,
# as upstream ignores unknown keys.
_LAYER_KWARGS = ("name", "trainable")


def safe_norm(x: tf.Tensor, axis: int = -1) -> tf.Tensor:
    """Euclidean norm whose gradient is exactly 0 at an exactly-zero vector (as torch).

    NaN inputs still give NaN (value and gradient): only an exact 0 is special-cased.
    """
    sq = tf.reduce_sum(tf.square(x), axis=axis)
    is_zero = tf.equal(sq, 0.0)
    # sqrt never sees the 0, so its infinite derivative is never multiplied by 0.
    root = tf.sqrt(tf.where(is_zero, tf.ones_like(sq), sq))
    return tf.where(is_zero, tf.zeros_like(sq), root)


def _median_over_axis1(x: tf.Tensor) -> tf.Tensor:
    """0.5 quantile (linear interpolation) over axis 1 of (B, K, C), keepdims.

    Sort-based and differentiable: the gradient goes to the middle element, or 0.5 to each
    of the two middle ones. Any NaN along the axis gives NaN, as torch/numpy do.
    """
    n = x.shape[1]
    xt = tf.transpose(x, [0, 2, 1])  # (B, C, K)
    order = tf.argsort(xt, axis=-1, stable=True)
    srt = tf.gather(xt, order, axis=2, batch_dims=2)
    pos = 0.5 * (n - 1)
    lo, hi = int(np.floor(pos)), int(np.ceil(pos))
    v_lo, v_hi = srt[..., lo], srt[..., hi]
    med = v_lo + (pos - lo) * (v_hi - v_lo)  # (B, C)
    has_nan = tf.reduce_any(tf.math.is_nan(xt), axis=-1)
    med = tf.where(has_nan, tf.fill(tf.shape(med), np.float32(np.nan)), med)
    return med[:, None, :]


@keras.saving.register_keras_serializable(package="nlf_tf")
class PCALoss(keras.layers.Layer):
    """Penalises predictions that fall outside a low-dimensional PCA subspace.

    Construction fits :class:`nlf_tf.pca_fit.KeypointPCA` on the labels in
    ``data_module`` (unless ``fitted_params`` is given) and stores the mean, the kept and
    discarded eigenvectors and epsilon as non-trainable weights.

    Calling the layer, ``loss, logs = layer(keypoints_pred, stage="train")``:

    1. formats the predictions (B, C*K) or (B, K, C) like the labels (singleview: column
       selection and optional centring, (B, D); multiview: (B*M, 2V), row b*M + m),
    2. takes the per-keypoint (per-view in multiview) distance to the PCA reconstruction,
    3. rectifies with ``max(e - epsilon, 0)`` (NaN propagates), and
    4. averages over all entries (zeros included).

    ``logs`` is ``[{"name": f"{stage}_{loss_name}_loss", "value": loss, "prog_bar": True},
    {"name": f"{loss_name}_weight", "value": weight}]``. The loss is **not** multiplied by
    :attr:`weight`; the training code does that. Predictions are cast to float32 (the
    layer's dtype policy is always float32, also under ``mixed_float16``). There is no NaN
    masking at loss time: a NaN in a prediction row makes that row's errors, the scalar
    and that row's gradient NaN (in both NaN policies).

    Args:
      loss_name: ``"pca_singleview"`` or ``"pca_multiview"``.
      components_to_keep: singleview: ``int`` count (negative values slice from the end) or
        ``float`` variance fraction in [0, 1] (smallest k with cumulative ratio >= it; 1.0
        keeps all). Exact types: None, bool and numpy scalars raise TypeError (after the
        fit, as upstream). Multiview: ignored, 3 components are kept (UserWarning if not 3).
      empirical_epsilon_percentile: percentile (0-100 scale) of the training reprojection
        errors that gives the empirical epsilon.
      epsilon: fixed epsilon in pixels; overrides percentile and multiplier (the empirical
        value is still computed and stored). A non-number raises TypeError after the fit.
      empirical_epsilon_multiplier: epsilon = empirical * multiplier when epsilon is None.
      mirrored_column_matches: required for multiview. V lists of keypoint indices (entry m
        of every list is the same body part), or a flat per-view list of ints expanded as
        list v = v * keypoints_per_view + index (integer arithmetic; needs ``num_views``).
      columns_for_singleview_pca: singleview keypoint subset in label order (numpy indexing
        rules; None = all).
      data_module: the training labels, in the predictions' pixel frame: an array
        (N, K, C) / (N, C*K) with NaN for missing labels, or a ``tf.data.Dataset`` of such
        arrays or of dicts holding them under ``data_key`` (see
        :func:`nlf_tf.pca_fit.labels_from_source`). Not stored in the config.
      log_weight: ``weight = 1 / (2 * exp(log_weight))``, for the training code.
      device: accepted for compatibility and ignored.
      centering_method: singleview only: None, ``"mean"`` or ``"median"`` per-frame
        centring of labels and predictions (a frame with any missing selected keypoint
        becomes all-NaN).
      nan_policy: ``"raise"`` (default): the fit raises ValueError, naming the keypoint,
        when a keypoint entering the PCA is labelled in fewer than 2 frames (counted after
        centring), when the pairwise-complete covariance is not finite, and when the
        epsilon to be used is NaN. ``"propagate"``: parity with lightning-pose, NaN flows
        into the mean / epsilon / loss (and a 0/0 covariance raises LinAlgError).
      coords_dim: 2, or 3 for 3D keypoints (singleview only; multiview 3D raises).
      num_views, keypoints_per_view: layout for the flat-int ``mirrored_column_matches``.
      data_key: dict key (or tuple index) of the labels in ``data_module`` elements.
      fitted_params: a :class:`PCAFitResult` or its ``to_dict()``; builds the layer
        without fitting (used by ``from_config`` / model loading).
      **kwargs: ``name`` and ``trainable`` go to the Keras layer; anything else is ignored.
    """

    LOSS_NAME_SINGLEVIEW = pca_fit.LOSS_NAME_SINGLEVIEW
    LOSS_NAME_MULTIVIEW = pca_fit.LOSS_NAME_MULTIVIEW

    def __init__(
        self,
        loss_name: str,
        components_to_keep: int | float = 0.95,
        empirical_epsilon_percentile: float = 99.0,
        epsilon: float | None = None,
        empirical_epsilon_multiplier: float = 1.0,
        mirrored_column_matches: Any = None,
        columns_for_singleview_pca: Any = None,
        data_module: Any = None,
        log_weight: float = 0.0,
        device: Any = None,
        centering_method: str | None = None,
        *,
        nan_policy: str = "raise",
        coords_dim: int = 2,
        num_views: int | None = None,
        keypoints_per_view: int | None = None,
        data_key: Any = None,
        fitted_params: Any = None,
        **kwargs: Any,
    ):
        layer_kwargs = {k: kwargs.pop(k) for k in _LAYER_KWARGS if k in kwargs}
        kwargs.pop("dtype", None)  # always float32, see the class docstring
        if kwargs:
            logger.debug("PCALoss ignores extra arguments %s", sorted(kwargs))
        super().__init__(dtype="float32", **layer_kwargs)

        if loss_name not in (self.LOSS_NAME_SINGLEVIEW, self.LOSS_NAME_MULTIVIEW):
            raise ValueError(f"Invalid loss_name: {loss_name}")
        if loss_name == self.LOSS_NAME_MULTIVIEW and mirrored_column_matches is None:
            raise ValueError("must provide mirrored_column_matches in data config")

        self.loss_name = loss_name
        self.components_to_keep = components_to_keep
        self.empirical_epsilon_percentile = empirical_epsilon_percentile
        self._epsilon_arg = epsilon
        self.empirical_epsilon_multiplier = empirical_epsilon_multiplier
        self.mirrored_column_matches = _plain(mirrored_column_matches)
        self.columns_for_singleview_pca = _plain(columns_for_singleview_pca)
        self.log_weight = float(log_weight)
        self.device = None if device is None else str(device)
        self.centering_method = centering_method
        self.nan_policy = nan_policy
        self.coords_dim = coords_dim
        self.num_views = num_views
        self.keypoints_per_view = keypoints_per_view
        self.data_key = data_key
        self.reduction = "mean"
        self.pca: KeypointPCA | None = None

        if fitted_params is None:
            if data_module is None:
                raise PCAAssertionError("data_module must not be None (or give fitted_params)")
            self.pca = KeypointPCA(
                loss_name,
                components_to_keep=components_to_keep,
                empirical_epsilon_percentile=empirical_epsilon_percentile,
                epsilon=epsilon,
                empirical_epsilon_multiplier=empirical_epsilon_multiplier,
                mirrored_column_matches=mirrored_column_matches,
                columns_for_singleview_pca=columns_for_singleview_pca,
                centering_method=centering_method,
                nan_policy=nan_policy,
                coords_dim=coords_dim,
                num_views=num_views,
                keypoints_per_view=keypoints_per_view,
            )
            result = self.pca.fit(labels_from_source(data_module, data_key, coords_dim=coords_dim))
        else:
            if data_module is not None:
                raise ValueError("give either data_module (to fit) or fitted_params, not both")
            if nan_policy not in pca_fit.NAN_POLICIES:
                raise ValueError(f"nan_policy must be one of {pca_fit.NAN_POLICIES}, got {nan_policy!r}")
            result = PCAFitResult.from_dict(fitted_params)
            mismatch = [
                (field, mine, theirs)
                for field, mine, theirs in (
                    ("loss_name", loss_name, result.loss_name),
                    ("coords_dim", coords_dim, result.coords_dim),
                    (
                        "centering_method",
                        centering_method if loss_name == self.LOSS_NAME_SINGLEVIEW else None,
                        result.centering_method,
                    ),
                )
                if mine != theirs
            ]
            if mismatch:
                raise ValueError(
                    "fitted_params do not match the arguments: "
                    + ", ".join(f"{f}={a!r} but fitted with {b!r}" for f, a, b in mismatch)
                )
        self.fit_result = result

        self._num_keypoints = result.num_keypoints
        self._dim = result.dim
        self._coords = result.coords_dim
        if loss_name == self.LOSS_NAME_SINGLEVIEW:
            cols = result.columns
            # Skip the gather when it is the identity.
            self._gather = None if cols == list(range(result.num_keypoints)) else np.asarray(cols, np.int32)
            self._centering = result.centering_method
        else:
            self._gather = np.asarray(result.matches, np.int32).T  # (M, V)
            self._centering = None

        def make(name, value):
            value = np.asarray(value, np.float32)
            var = self.add_weight(
                name=name, shape=value.shape, dtype="float32", initializer="zeros", trainable=False
            )
            var.assign(value)
            return var

        self.mean = make("mean", result.mean)
        self.kept_eigenvectors = make("kept_eigenvectors", result.kept_eigenvectors)
        self.discarded_eigenvectors = make("discarded_eigenvectors", result.discarded_eigenvectors)
        self.epsilon = make("epsilon", result.epsilon)
        self.empirical_epsilon = make("empirical_epsilon", result.empirical_epsilon)
        self.built = True

    # -- construction helpers -------------------------------------------------------------

    @classmethod
    def from_fitted(cls, fitted: PCAFitResult | dict, **kwargs: Any) -> "PCALoss":
        """Builds the layer from an existing fit (no data needed)."""
        result = PCAFitResult.from_dict(fitted)
        args = dict(loss_name=result.loss_name, coords_dim=result.coords_dim)
        if result.loss_name == cls.LOSS_NAME_SINGLEVIEW:
            args.update(
                centering_method=result.centering_method,
                columns_for_singleview_pca=result.columns,
            )
        else:
            args.update(mirrored_column_matches=result.matches)
        args.update(kwargs)
        return cls(fitted_params=result.to_dict(), **args)

    def get_config(self) -> dict:
        config = super().get_config()
        config.pop("dtype", None)
        config.update(
            loss_name=self.loss_name,
            components_to_keep=self.components_to_keep,
            empirical_epsilon_percentile=self.empirical_epsilon_percentile,
            epsilon=self._epsilon_arg,
            empirical_epsilon_multiplier=self.empirical_epsilon_multiplier,
            mirrored_column_matches=self.mirrored_column_matches,
            columns_for_singleview_pca=self.columns_for_singleview_pca,
            log_weight=self.log_weight,
            device=self.device,
            centering_method=self.centering_method,
            nan_policy=self.nan_policy,
            coords_dim=self.coords_dim,
            num_views=self.num_views,
            keypoints_per_view=self.keypoints_per_view,
            data_key=self.data_key,
            fitted_params=self.fit_result.to_dict(),
        )
        return config

    # -- weighting and logging ------------------------------------------------------------

    @property
    def weight(self) -> tf.Tensor:
        """1 / (2 exp(log_weight)) in float32 (applied by the training code, not here)."""
        lw = np.float32(self.log_weight)
        return tf.constant(np.float32(1.0) / (np.float32(2.0) * np.exp(lw)), tf.float32)

    def remove_nans(self, **kwargs: Any) -> None:
        """No-op, as upstream (NaN is not masked)."""
        return None

    # -- computation ----------------------------------------------------------------------

    def format_predictions(self, keypoints_pred: Any) -> tf.Tensor:
        """(B, C*K) or (B, K, C) predictions -> formatted float32 (B', D), as the fit."""
        x = tf.cast(keypoints_pred, tf.float32)
        k, c = self._num_keypoints, self._coords
        shape = x.shape
        if shape.rank == 2:
            ok = shape[-1] is None or shape[-1] == k * c
        elif shape.rank == 3:
            ok = shape[1] in (None, k) and shape[2] in (None, c)
        else:
            ok = False
        if not ok:
            raise ValueError(
                f"{self.loss_name}: keypoints_pred must have shape (B, {k * c}) or "
                f"(B, {k}, {c}), got {tuple(shape)}"
            )
        x = tf.reshape(x, [-1, k, c])
        if self._gather is not None:
            x = tf.gather(x, self._gather, axis=1)  # singleview (B, K_sel, C) or (B, M, V, 2)
        if self.loss_name == self.LOSS_NAME_MULTIVIEW:
            return tf.reshape(x, [-1, self._dim])
        if self._centering == "mean":
            x = x - tf.reduce_mean(x, axis=1, keepdims=True)
        elif self._centering == "median":
            x = x - _median_over_axis1(x)
        elif self._centering is not None:
            raise NotImplementedError(f"centering_method={self._centering!r} is not implemented")
        return tf.reshape(x, [-1, self._dim])

    def compute_loss(self, predictions: Any) -> tf.Tensor:
        """Per-sample, per-keypoint reprojection error of **formatted** predictions.

        Args:
          predictions: (num_samples, D) already formatted (see :meth:`format_predictions`).

        Returns:
          float32 (num_samples, D / coords_dim): distance of each keypoint (singleview) or
          view (multiview) to its PCA reconstruction.
        """
        x = tf.cast(predictions, tf.float32)
        if x.shape.rank != 2 or x.shape[-1] not in (None, self._dim):
            raise PCAAssertionError(
                f"{self.loss_name}: compute_loss expects formatted predictions of shape "
                f"(num_samples, {self._dim}), got {tuple(x.shape)}"
            )
        mean = tf.convert_to_tensor(self.mean.value)
        kept = tf.convert_to_tensor(self.kept_eigenvectors.value)
        # Same float32 route as upstream: project, reconstruct, subtract.
        latent = tf.matmul(x - mean, kept, transpose_b=True)
        recon = tf.matmul(latent, kept) + mean
        diff = tf.reshape(x - recon, [-1, self._dim // self._coords, self._coords])
        return safe_norm(diff, axis=-1)

    def per_keypoint_error(self, keypoints_pred: Any) -> tf.Tensor:
        """``compute_loss(format_predictions(keypoints_pred))``, (B', D / coords_dim)."""
        return self.compute_loss(self.format_predictions(keypoints_pred))

    def call(self, keypoints_pred, stage=None, **kwargs):
        """Returns ``(loss, logs)``; extra keyword arguments (heatmaps, ...) are ignored."""
        del kwargs
        errors = self.per_keypoint_error(keypoints_pred)
        excess = errors - tf.convert_to_tensor(self.epsilon.value)
        # relu that keeps NaN (forward and gradient), with derivative 0 at 0, as torch.
        rectified = tf.where(excess <= 0.0, tf.zeros_like(excess), excess)
        loss = tf.reduce_mean(rectified)
        logs = [
            {"name": f"{stage}_{self.loss_name}_loss", "value": loss, "prog_bar": True},
            {"name": f"{self.loss_name}_weight", "value": self.weight},
        ]
        return loss, logs

    def compute_output_spec(self, keypoints_pred, stage=None, **kwargs):
        raise TypeError(
            "PCALoss returns (loss, logs) where logs hold Python strings, so it cannot be a "
            "node of a functional Keras model; call it on tensors (eagerly, in a train step "
            "or in a subclassed model's call)"
        )

def _plain(value: Any) -> Any:
    """Config-friendly copy: tuples/arrays -> lists, numpy ints -> ints."""
    if value is None:
        return None
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    return value
