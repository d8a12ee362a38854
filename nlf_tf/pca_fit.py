"""NumPy fit of lightning-pose's keypoint PCA (the data side of the PCA loss).

This module reproduces ``KeypointPCA`` / ``NaNPCA`` of lightning-pose 2.4.3
(``lightning_pose/utils/pca.py``): formatting of the labels, NaN-aware mean and
pairwise-complete covariance, eigendecomposition in float64, sklearn's sign rule,
the choice of the number of kept components and the empirical epsilon. The Keras
layer that evaluates the loss lives in :mod:`nlf_tf.pca_loss`.

Coordinate frame: the labels given to the fit **must be in the same pixel frame as the
predictions the loss will later receive** (normally the model-input frame after
resizing). Unlike upstream, nothing here converts between frames.

Layouts. A label array is either ``(N, K, C)`` or flat ``(N, C*K)`` with the coordinates
of one keypoint interleaved (``[x0, y0, x1, y1, ...]`` for C = 2). ``C`` is
``coords_dim``: 2 as upstream, or 3 (single-view only, an extension for root-relative 3D
keypoints). For multi-view data the views are concatenated along the keypoint axis in a
fixed order.
"""

from __future__ import annotations

import dataclasses
import logging
import numbers
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

LOSS_NAME_SINGLEVIEW = "pca_singleview"
LOSS_NAME_MULTIVIEW = "pca_multiview"
NAN_POLICIES = ("raise", "propagate")
CENTERING_METHODS = (None, "mean", "median")

__all__ = [
    "LOSS_NAME_SINGLEVIEW",
    "LOSS_NAME_MULTIVIEW",
    "NAN_POLICIES",
    "PCAAssertionError",
    "PCAFitResult",
    "KeypointPCA",
    "labels_from_source",
    "expand_mirrored_column_matches",
    "format_singleview",
    "format_multiview",
    "nan_mean",
    "nan_covariance",
    "nan_pca",
    "choose_num_components",
    "reprojection_error",
    "empirical_epsilon",
    "choose_epsilon",
]


class PCAAssertionError(AssertionError, ValueError):
    """Raised where lightning-pose fails an ``assert``.

    It is an ``AssertionError`` (the upstream exception type) and also a ``ValueError``,
    so callers may catch either.
    """


# ----------------------------------------------------------------------------------------
# Label sources
# ----------------------------------------------------------------------------------------


def _to_numpy(value: Any, what: str) -> np.ndarray:
    try:
        import tensorflow as tf  # local import: the fit itself does not need TF

        if isinstance(value, (tf.RaggedTensor, tf.SparseTensor)):
            raise TypeError(
                f"{what}: ragged or sparse label tensors are not supported; give a dense "
                "array with NaN for missing labels"
            )
        if isinstance(value, (tf.Tensor, tf.Variable)):
            value = value.numpy()
    except ImportError:  # pragma: no cover - TF is a project dependency
        pass
    arr = np.asarray(value)
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    ):
        raise TypeError(f"{what}: expected a numeric label array, got dtype {arr.dtype}")
    return arr


def _select_key(element: Any, key: Any, what: str) -> Any:
    if isinstance(element, Mapping):
        if key is None:
            raise ValueError(
                f"{what} yields dicts with keys {sorted(map(str, element))}; pass key=... "
                "to say which one holds the keypoint labels"
            )
        if key not in element:
            raise KeyError(f"{what}: key {key!r} not found; available: {sorted(map(str, element))}")
        return element[key]
    if key is not None:
        if isinstance(element, (tuple, list)) and isinstance(key, int):
            return element[key]
        raise ValueError(f"{what}: key={key!r} given but the elements are not dicts")
    if isinstance(element, (tuple, list)) and not isinstance(element, np.ndarray):
        # A tuple element such as (image, labels) is ambiguous; a plain list of numbers is data.
        if len(element) and not isinstance(element[0], numbers.Number):
            raise ValueError(
                f"{what} yields tuples; pass an integer key=... to pick the labels"
            )
    return element


def labels_from_source(
    source: Any,
    key: Any = None,
    *,
    batched: bool | None = None,
    coords_dim: int = 2,
) -> np.ndarray:
    """Turns a label source into one float32 array with frames along axis 0.

    This is the port's replacement of lightning-pose's ``data_module``: it should yield
    the **training split only**, without augmentation, in the same pixel frame as the
    predictions the loss will receive.

    Args:
      source: a label array (``np.ndarray``, ``tf.Tensor`` or nested list) of shape
        ``(N, K, C)`` or ``(N, C*K)``; or a ``tf.data.Dataset`` whose elements are label
        arrays or dicts (or tuples) holding one; or a dict holding an array under ``key``.
        A dataset is iterated eagerly once and its elements are concatenated.
      key: the dict key (or tuple index) of the labels when elements are dicts/tuples.
      batched: for datasets only: whether each element is a batch of frames
        (``(B, K, C)`` or ``(B, C*K)``) or one frame (``(K, C)`` or ``(C*K,)``). ``None``
        infers it from the rank: rank 1 is one frame, rank 3 a batch, and rank 2 is one
        ``(K, C)`` frame if its last size equals ``coords_dim``, else a batch of flat
        frames. Pass it explicitly for one-keypoint layouts, where rank 2 is ambiguous.
      coords_dim: coordinates per keypoint, used only for that inference.

    Returns:
      float32 array of shape ``(N, K, C)`` or ``(N, C*K)`` (the element layout is kept).
    """
    if source is None:
        raise PCAAssertionError("data_module (the label source) must not be None")
    try:
        import tensorflow as tf

        is_dataset = isinstance(source, tf.data.Dataset)
    except ImportError:  # pragma: no cover
        is_dataset = False

    if not is_dataset:
        value = _select_key(source, key, "label source") if (
            key is not None or isinstance(source, Mapping)) else source
        arr = _to_numpy(value, "label source")
        if arr.ndim not in (2, 3):
            raise ValueError(
                f"label source: expected shape (N, K, C) or (N, C*K), got {arr.shape}"
            )
        return arr.astype(np.float32)

    chunks = []
    for element in source:
        arr = _to_numpy(_select_key(element, key, "label dataset"), "label dataset")
        if batched is True:
            if arr.ndim not in (2, 3):
                raise ValueError(f"label dataset: batched element must have rank 2 or 3, got {arr.shape}")
        elif batched is False:
            if arr.ndim not in (1, 2):
                raise ValueError(f"label dataset: unbatched element must have rank 1 or 2, got {arr.shape}")
            arr = arr[None]
        else:
            if arr.ndim == 1 or (arr.ndim == 2 and arr.shape[-1] == coords_dim):
                arr = arr[None]
            elif arr.ndim not in (2, 3):
                raise ValueError(f"label dataset: element has unsupported shape {arr.shape}")
        if chunks and arr.shape[1:] != chunks[0].shape[1:]:
            raise ValueError(
                f"label dataset: element frame shape {arr.shape[1:]} differs from the first "
                f"element's {chunks[0].shape[1:]}"
            )
        chunks.append(arr.astype(np.float32))
    if not chunks:
        raise ValueError("label dataset yielded no elements")
    return np.concatenate(chunks, axis=0)


def _as_frames(labels: np.ndarray, coords_dim: int) -> np.ndarray:
    """(N, K, C) or (N, C*K) -> float32 (N, K, C), checking the coordinate size."""
    arr = np.asarray(labels, dtype=np.float32)
    if arr.ndim == 3:
        if arr.shape[-1] != coords_dim:
            raise ValueError(
                f"labels: last axis has size {arr.shape[-1]} but coords_dim={coords_dim}"
            )
        return arr
    if arr.ndim == 2:
        if arr.shape[1] % coords_dim:
            raise ValueError(
                f"labels: flat width {arr.shape[1]} is not a multiple of coords_dim={coords_dim}"
            )
        return arr.reshape(arr.shape[0], arr.shape[1] // coords_dim, coords_dim)
    raise ValueError(f"labels: expected shape (N, K, C) or (N, C*K), got {arr.shape}")


# ----------------------------------------------------------------------------------------
# Formatting
# ----------------------------------------------------------------------------------------


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def expand_mirrored_column_matches(
    matches: Any,
    num_views: int | None = None,
    keypoints_per_view: int | None = None,
    num_keypoints: int | None = None,
) -> list[list[int]]:
    """Normalises ``mirrored_column_matches`` to V lists of keypoint indices.

    * A list of lists (its first element is not an int) is returned as lists of ints.
      The inner lists must have equal length (``PCAAssertionError`` otherwise).
    * A flat list of ints is the per-view index list: list v = v * keypoints_per_view
      + index, with integer arithmetic (as lightning-pose's loss factory does; upstream's
      ``KeypointPCA`` used true division instead). ``num_views`` is required;
      ``keypoints_per_view`` defaults to ``num_keypoints // num_views`` (which must divide
      evenly) when the total keypoint count is known.
    """
    if matches is None:
        raise ValueError("must provide mirrored_column_matches in data config")
    matches = list(matches)
    if not matches:
        raise ValueError("mirrored_column_matches must not be empty")
    if _is_int(matches[0]):
        if not all(_is_int(m) for m in matches):
            raise ValueError("mirrored_column_matches: a flat list must hold only ints")
        if num_views is None:
            raise ValueError(
                "mirrored_column_matches must contain a list of indices for each mirrored "
                "view, or be a flat per-view index list together with num_views"
            )
        if not _is_int(num_views) or num_views < 1:
            raise ValueError(f"num_views must be a positive int, got {num_views!r}")
        if keypoints_per_view is None:
            if num_keypoints is None:
                raise ValueError(
                    "mirrored_column_matches is a flat list: give keypoints_per_view "
                    "(or the labels, to derive it as num_keypoints // num_views)"
                )
            if num_keypoints % num_views:
                raise ValueError(
                    f"cannot split {num_keypoints} keypoints evenly into num_views={num_views} "
                    "views; give keypoints_per_view"
                )
            keypoints_per_view = num_keypoints // num_views
        if not _is_int(keypoints_per_view) or keypoints_per_view < 1:
            raise ValueError(f"keypoints_per_view must be a positive int, got {keypoints_per_view!r}")
        return [[int(v * keypoints_per_view + m) for m in matches] for v in range(num_views)]
    out = []
    for v, lst in enumerate(matches):
        if isinstance(lst, (str, bytes)) or not isinstance(lst, (Sequence, np.ndarray)):
            raise ValueError(f"mirrored_column_matches[{v}] must be a list of ints, got {lst!r}")
        if not all(_is_int(m) for m in lst):
            raise ValueError(f"mirrored_column_matches[{v}] must hold only ints, got {list(lst)!r}")
        out.append([int(m) for m in lst])
    lengths = {len(lst) for lst in out}
    if len(lengths) != 1:
        raise PCAAssertionError(
            f"mirrored_column_matches: every view needs the same number of keypoints, got "
            f"lengths {[len(lst) for lst in out]}"
        )
    if num_views is not None and num_views != len(out):
        raise ValueError(
            f"mirrored_column_matches has {len(out)} view lists but num_views={num_views}"
        )
    return out


def _resolve_indices(indices: Sequence[int], num_keypoints: int, what: str) -> list[int]:
    """Applies numpy indexing rules (negative indices, IndexError when out of range)."""
    idx = np.asarray(indices)
    if idx.size == 0:
        raise ValueError(f"{what} must not be empty")
    if not np.issubdtype(idx.dtype, np.integer):
        raise IndexError(f"{what} must hold integer keypoint indices, got {list(indices)!r}")
    bad = idx[(idx >= num_keypoints) | (idx < -num_keypoints)]
    if bad.size:
        raise IndexError(
            f"{what}: index {int(bad[0])} is out of bounds for {num_keypoints} keypoints"
        )
    return [int(i) for i in np.arange(num_keypoints)[idx]]


def _median_np(x: np.ndarray, axis: int) -> np.ndarray:
    """0.5 quantile with linear interpolation; any NaN along ``axis`` gives NaN."""
    n = x.shape[axis]
    srt = np.sort(x, axis=axis)
    pos = 0.5 * (n - 1)
    lo, hi = int(np.floor(pos)), int(np.ceil(pos))
    v_lo = np.take(srt, [lo], axis=axis)
    v_hi = np.take(srt, [hi], axis=axis)
    med = v_lo + np.float32(pos - lo) * (v_hi - v_lo)
    has_nan = np.isnan(x).any(axis=axis, keepdims=True)
    return np.where(has_nan, np.float32(np.nan), med).astype(x.dtype)


def format_singleview(
    frames: np.ndarray, columns: Sequence[int] | None, centering_method: str | None
) -> np.ndarray:
    """(N, K, C) -> (N, C*K_sel): column selection, then optional per-frame centring."""
    x = np.asarray(frames, dtype=np.float32)
    if columns is not None:
        x = x[:, np.asarray(columns, dtype=np.int64), :]
    if centering_method == "mean":
        x = x - np.mean(x, axis=1, keepdims=True)
    elif centering_method == "median":
        x = x - _median_np(x, axis=1)
    elif centering_method is not None:
        raise NotImplementedError(f"centering_method={centering_method!r} is not implemented")
    return x.reshape(x.shape[0], -1)


def format_multiview(frames: np.ndarray, matches: Sequence[Sequence[int]]) -> np.ndarray:
    """(N, K, 2) -> (N*M, 2V). Row n*M + m holds part m of frame n in every view."""
    x = np.asarray(frames, dtype=np.float32)
    idx = np.asarray(matches, dtype=np.int64).T  # (M, V)
    out = x[:, idx, :]  # (N, M, V, C)
    return out.reshape(-1, idx.shape[1] * x.shape[2])


# ----------------------------------------------------------------------------------------
# NaN-aware PCA
# ----------------------------------------------------------------------------------------


def nan_mean(x: np.ndarray) -> np.ndarray:
    """Column means over the observed entries, in float32 (NaN for unobserved columns)."""
    x = np.asarray(x, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "Mean of empty slice"
        return np.nanmean(x, axis=0).astype(np.float32)


def nan_covariance(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairwise-complete covariance (numpy masked ``cov``, ddof=1), in float64.

    Returns ``(C, n)`` with ``n[i, j]`` the number of rows where both columns are
    observed. Column means are taken over each column's own observed entries. With
    ``n_ij <= 1`` the division is by 0 or -1, as upstream (never-observed columns give
    zeros, singly-observed ones NaN/inf).
    """
    x = np.asarray(x, dtype=np.float64)
    obs = ~np.isnan(x)
    count = obs.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        col_mean = np.where(count > 0, np.where(obs, x, 0.0).sum(axis=0) / count, np.nan)
        centred = np.where(obs, x - col_mean, 0.0)
        n = obs.T.astype(np.float64) @ obs.astype(np.float64)
        cov = (centred.T @ centred) / (n - 1.0)
    return cov, n


def nan_pca(x: np.ndarray) -> dict[str, np.ndarray]:
    """All D principal components of ``x`` (R, D) as ``NaNPCA`` (covariance_eigh) computes.

    Returns dict with ``mean`` (float32), ``components`` (D, D) float64 rows sorted by
    decreasing eigenvalue with sklearn's sign rule, ``explained_variance`` (negative
    eigenvalues clipped to 0), ``explained_variance_ratio`` and ``covariance``.
    Raises ``np.linalg.LinAlgError`` when the covariance is not finite, as LAPACK does
    upstream.
    """
    mean = nan_mean(x)
    cov, _ = nan_covariance(x)
    if not np.all(np.isfinite(cov)):
        raise np.linalg.LinAlgError(
            "Eigenvalues did not converge (the pairwise-complete covariance is not finite: "
            "some column or pair of columns is observed in only one row)"
        )
    evals, evecs = np.linalg.eigh(cov)
    evals = evals[::-1].copy()
    components = evecs[:, ::-1].T.copy()
    evals[evals < 0.0] = 0.0
    # sklearn svd_flip (v-based): largest-|.| entry of each row (first on ties) positive.
    pivot = np.argmax(np.abs(components), axis=1)
    signs = np.sign(components[np.arange(components.shape[0]), pivot])
    components *= signs[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = evals / evals.sum()
    return dict(
        mean=mean,
        components=components,
        explained_variance=evals,
        explained_variance_ratio=ratio,
        covariance=cov,
    )


def choose_num_components(
    components_to_keep: Any, explained_variance_ratio: np.ndarray, loss_name: str
) -> int:
    """Number of kept components, with upstream's exact type and threshold rules.

    Multiview: always 3 (a UserWarning when told otherwise); singleview: an ``int`` is the
    count (negative values slice from the end, as Python slicing does), a ``float`` is the
    explained-variance threshold (first index where the cumulative ratio is >= it; 1.0
    keeps everything); any other type (None, bool, numpy scalars) raises TypeError.
    The returned value is used as ``components[:k]``.
    """
    dim = len(explained_variance_ratio)
    if loss_name == LOSS_NAME_MULTIVIEW:
        if components_to_keep != 3:
            warnings.warn(
                f"components_to_keep={components_to_keep!r} is ignored for "
                f"{LOSS_NAME_MULTIVIEW}; 3 components are kept",
                UserWarning,
                stacklevel=3,
            )
        return 3
    if type(components_to_keep) is int:  # noqa: E721 - exact type check, as upstream
        if components_to_keep > dim:
            raise ValueError(
                f"components_to_keep={components_to_keep} exceeds the PCA dimension {dim}"
            )
        return components_to_keep
    if type(components_to_keep) is float:  # noqa: E721
        if not 0.0 <= components_to_keep <= 1.0:
            raise ValueError(
                f"components_to_keep as a variance fraction must be in [0, 1], got "
                f"{components_to_keep}"
            )
        if components_to_keep == 1.0:
            return dim
        cumulative = np.cumsum(explained_variance_ratio)
        reached = np.where(cumulative >= components_to_keep)[0]
        if reached.size == 0:
            raise IndexError(
                f"no number of components reaches components_to_keep={components_to_keep} "
                f"of the variance (cumulative ratios {np.round(cumulative, 6).tolist()}); "
                "the training data may have zero variance"
            )
        return int(reached[0]) + 1
    raise TypeError(
        f"components_to_keep must be an int (count) or a float (variance fraction), got "
        f"{type(components_to_keep).__name__} {components_to_keep!r}"
    )


def reprojection_error(
    x: np.ndarray, mean: np.ndarray, kept: np.ndarray, coords_dim: int = 2
) -> np.ndarray:
    """Per-keypoint distance to the PCA reconstruction, float32, (R, D/C)."""
    x = np.asarray(x, dtype=np.float32)
    mean = np.asarray(mean, dtype=np.float32)
    kept = np.asarray(kept, dtype=np.float32)
    dim = x.shape[1]
    if dim % coords_dim or mean.shape != (dim,) or kept.shape[1:] != (dim,):
        raise PCAAssertionError(
            f"reprojection: data width {dim}, mean {mean.shape}, kept eigenvectors "
            f"{kept.shape} and coords_dim={coords_dim} do not match"
        )
    recon = ((x - mean) @ kept.T) @ kept + mean
    diff = (x - recon).reshape(x.shape[0], dim // coords_dim, coords_dim)
    return np.sqrt(np.sum(diff * diff, axis=-1, dtype=np.float32)).astype(np.float32)


def empirical_epsilon(errors: np.ndarray, percentile: float) -> np.float32:
    """``numpy.nanpercentile`` (linear) of all errors; NaN if every entry is NaN."""
    errors = np.asarray(errors)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "All-NaN slice"
        return np.float32(np.nanpercentile(errors, percentile))


def choose_epsilon(
    empirical: float, epsilon: Any = None, multiplier: float = 1.0
) -> np.float32:
    """Fixed epsilon if given (percentile and multiplier then unused), else empirical * multiplier."""
    if epsilon is not None:
        if isinstance(epsilon, (str, bytes, Mapping)) or np.ndim(epsilon) != 0:
            raise TypeError(f"epsilon must be a number or None, got {epsilon!r}")
        return np.float32(epsilon)
    return np.float32(np.float32(empirical) * np.float32(multiplier))


# ----------------------------------------------------------------------------------------
# Result record and the fit driver
# ----------------------------------------------------------------------------------------


def _float_list(a: np.ndarray) -> list:
    return np.asarray(a, dtype=np.float64).tolist()


@dataclasses.dataclass
class PCAFitResult:
    """Everything the loss needs, and what it reports, after a fit.

    Attributes:
      loss_name: ``"pca_singleview"`` or ``"pca_multiview"``.
      coords_dim: coordinates per keypoint (C).
      num_keypoints: K of the input layout (all views for multiview).
      columns: resolved (non-negative) singleview gather indices; None for multiview.
      matches: resolved multiview index lists (V lists of M ints); None for singleview.
      centering_method: None, "mean" or "median" (singleview only).
      mean: (D,) float32.
      kept_eigenvectors: (k, D) float32.
      discarded_eigenvectors: (D - k, D) float32 (kept for reporting; unused by the loss).
      explained_variance: (D,) float64, clipped eigenvalues.
      explained_variance_ratio: (D,) float64.
      empirical_epsilon: float32 percentile of the training reprojection errors.
      epsilon: float32 epsilon used by the loss.
      num_samples: R, the number of formatted training rows.
    """

    loss_name: str
    coords_dim: int
    num_keypoints: int
    columns: list[int] | None
    matches: list[list[int]] | None
    centering_method: str | None
    mean: np.ndarray
    kept_eigenvectors: np.ndarray
    discarded_eigenvectors: np.ndarray
    explained_variance: np.ndarray
    explained_variance_ratio: np.ndarray
    empirical_epsilon: np.float32
    epsilon: np.float32
    num_samples: int

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    @property
    def num_components(self) -> int:
        return int(self.kept_eigenvectors.shape[0])

    @property
    def parameters(self) -> dict[str, np.ndarray]:
        """Upstream's ``KeypointPCA.parameters`` (epsilon = the empirical one)."""
        return dict(
            mean=self.mean,
            kept_eigenvectors=self.kept_eigenvectors,
            discarded_eigenvectors=self.discarded_eigenvectors,
            epsilon=np.float32(self.empirical_epsilon),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (plain lists and floats; exact for float32 values)."""
        return dict(
            loss_name=self.loss_name,
            coords_dim=int(self.coords_dim),
            num_keypoints=int(self.num_keypoints),
            columns=None if self.columns is None else [int(c) for c in self.columns],
            matches=None if self.matches is None else [[int(i) for i in m] for m in self.matches],
            centering_method=self.centering_method,
            dim=self.dim,
            mean=_float_list(self.mean),
            kept_eigenvectors=_float_list(self.kept_eigenvectors),
            discarded_eigenvectors=_float_list(self.discarded_eigenvectors),
            explained_variance=_float_list(self.explained_variance),
            explained_variance_ratio=_float_list(self.explained_variance_ratio),
            empirical_epsilon=float(self.empirical_epsilon),
            epsilon=float(self.epsilon),
            num_samples=int(self.num_samples),
        )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | "PCAFitResult") -> "PCAFitResult":
        if isinstance(d, PCAFitResult):
            return d
        required = (
            "loss_name", "coords_dim", "num_keypoints", "mean", "kept_eigenvectors",
            "discarded_eigenvectors", "epsilon",
        )
        missing = [k for k in required if k not in d]
        if missing:
            raise ValueError(f"fitted_params is missing entries {missing}")
        mean = np.asarray(d["mean"], dtype=np.float32).reshape(-1)
        dim = mean.shape[0]

        def mat(name):
            return np.asarray(d[name], dtype=np.float32).reshape(-1, dim)

        kept, discarded = mat("kept_eigenvectors"), mat("discarded_eigenvectors")
        coords_dim = int(d["coords_dim"])
        if dim % coords_dim:
            raise ValueError(f"fitted_params: dimension {dim} is not a multiple of coords_dim={coords_dim}")
        nan = np.full(dim, np.nan)
        result = cls(
            loss_name=d["loss_name"],
            coords_dim=coords_dim,
            num_keypoints=int(d["num_keypoints"]),
            columns=None if d.get("columns") is None else [int(c) for c in d["columns"]],
            matches=None if d.get("matches") is None else [[int(i) for i in m] for m in d["matches"]],
            centering_method=d.get("centering_method"),
            mean=mean,
            kept_eigenvectors=kept,
            discarded_eigenvectors=discarded,
            explained_variance=np.asarray(d.get("explained_variance", nan), dtype=np.float64),
            explained_variance_ratio=np.asarray(d.get("explained_variance_ratio", nan), dtype=np.float64),
            empirical_epsilon=np.float32(d.get("empirical_epsilon", np.nan)),
            epsilon=np.float32(d["epsilon"]),
            num_samples=int(d.get("num_samples", 0)),
        )
        result.validate()
        return result

    def validate(self) -> None:
        if self.loss_name not in (LOSS_NAME_SINGLEVIEW, LOSS_NAME_MULTIVIEW):
            raise ValueError(f"fitted_params: invalid loss_name {self.loss_name!r}")
        dim = self.dim
        if self.loss_name == LOSS_NAME_SINGLEVIEW:
            if self.columns is None or self.coords_dim * len(self.columns) != dim:
                raise ValueError(
                    f"fitted_params: singleview columns {self.columns} do not match dimension {dim}"
                )
            idx = self.columns
        else:
            if self.matches is None or self.coords_dim != 2 or 2 * len(self.matches) != dim:
                raise ValueError(
                    f"fitted_params: multiview matches {self.matches} do not match dimension {dim}"
                )
            idx = [i for m in self.matches for i in m]
        if any(not 0 <= i < self.num_keypoints for i in idx):
            raise ValueError(
                f"fitted_params: keypoint indices {idx} out of range for {self.num_keypoints} keypoints"
            )
        if self.kept_eigenvectors.shape[0] + self.discarded_eigenvectors.shape[0] != dim:
            raise ValueError(
                f"fitted_params: {self.kept_eigenvectors.shape[0]} kept + "
                f"{self.discarded_eigenvectors.shape[0]} discarded eigenvectors != dimension {dim}"
            )


class KeypointPCA:
    """lightning-pose's ``KeypointPCA``: formats training labels and fits the PCA.

    Args:
      loss_name: ``"pca_singleview"`` or ``"pca_multiview"``.
      components_to_keep: singleview: ``int`` count or ``float`` variance fraction (exact
        types, see :func:`choose_num_components`); multiview: ignored, 3 are kept.
      empirical_epsilon_percentile: percentile (0-100 scale) of the training reprojection
        errors giving the empirical epsilon.
      epsilon: fixed epsilon (pixels) overriding the empirical one; the empirical one is
        still computed and reported.
      empirical_epsilon_multiplier: factor on the empirical epsilon (only if epsilon is None).
      mirrored_column_matches: multiview: V lists of keypoint indices (entry m of every list
        is the same body part), or a flat per-view list expanded with ``num_views`` and
        ``keypoints_per_view`` (integer arithmetic).
      columns_for_singleview_pca: singleview keypoint subset (numpy indexing rules).
      centering_method: singleview per-frame centring: None, "mean" or "median".
      nan_policy: ``"raise"`` (default) raises at fit time, with a message naming the
        keypoint, when a keypoint entering the PCA is labelled in fewer than 2 frames (after
        centring, which drops any frame with a missing selected keypoint), when the
        pairwise-complete covariance is not finite, and when the epsilon to be used is NaN.
        ``"propagate"`` is the parity mode: behaves as lightning-pose (NaN mean, NaN
        epsilon and hence NaN loss; ``LinAlgError`` for a covariance with 0/0 entries).
      coords_dim: 2, or 3 for 3D keypoints (singleview only).
      num_views, keypoints_per_view: layout of the flat-int ``mirrored_column_matches``.

    After :meth:`fit`, ``result`` holds the :class:`PCAFitResult`, ``parameters`` the
    upstream-style parameter dict and ``data_arr`` the formatted training array.
    """

    def __init__(
        self,
        loss_name: str,
        components_to_keep: int | float = 0.99,
        empirical_epsilon_percentile: float = 99.0,
        epsilon: float | None = None,
        empirical_epsilon_multiplier: float = 1.0,
        mirrored_column_matches: Any = None,
        columns_for_singleview_pca: Sequence[int] | None = None,
        centering_method: str | None = None,
        *,
        nan_policy: str = "raise",
        coords_dim: int = 2,
        num_views: int | None = None,
        keypoints_per_view: int | None = None,
    ):
        if loss_name not in (LOSS_NAME_SINGLEVIEW, LOSS_NAME_MULTIVIEW):
            raise ValueError(f"Invalid loss_name: {loss_name}")
        if loss_name == LOSS_NAME_MULTIVIEW and mirrored_column_matches is None:
            raise ValueError("must provide mirrored_column_matches in data config")
        if nan_policy not in NAN_POLICIES:
            raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}")
        if not _is_int(coords_dim) or coords_dim not in (2, 3):
            raise ValueError(f"coords_dim must be 2 or 3, got {coords_dim!r}")
        if loss_name == LOSS_NAME_MULTIVIEW and coords_dim != 2:
            raise ValueError(
                f"{LOSS_NAME_MULTIVIEW} supports only 2D keypoints (coords_dim=2), got "
                f"coords_dim={coords_dim}"
            )
        self.loss_name = loss_name
        self.components_to_keep = components_to_keep
        self.empirical_epsilon_percentile = empirical_epsilon_percentile
        self.epsilon = epsilon
        self.empirical_epsilon_multiplier = empirical_epsilon_multiplier
        self.columns_for_singleview_pca = columns_for_singleview_pca
        self.centering_method = centering_method
        self.nan_policy = nan_policy
        self.coords_dim = int(coords_dim)
        self.num_views = num_views
        self.keypoints_per_view = keypoints_per_view
        self.mirrored_column_matches = None
        self._flat_matches = None
        if loss_name == LOSS_NAME_MULTIVIEW:
            raw = list(mirrored_column_matches)
            if raw and _is_int(raw[0]) and keypoints_per_view is None:
                # Expansion needs the total keypoint count: finish it at fit time.
                expand_mirrored_column_matches(raw, num_views, 1)  # validates the rest now
                self._flat_matches = raw
            else:
                self.mirrored_column_matches = expand_mirrored_column_matches(
                    raw, num_views, keypoints_per_view
                )
        self.result: PCAFitResult | None = None
        self.parameters: dict[str, np.ndarray] = {}
        self.data_arr: np.ndarray | None = None

    # -- formatting ---------------------------------------------------------------------

    def _resolve_layout(self, num_keypoints: int) -> tuple[list[int] | None, list[list[int]] | None]:
        if self.loss_name == LOSS_NAME_SINGLEVIEW:
            cols = self.columns_for_singleview_pca
            if cols is None:
                return list(range(num_keypoints)), None
            return _resolve_indices(list(cols), num_keypoints, "columns_for_singleview_pca"), None
        matches = self.mirrored_column_matches
        if matches is None:
            matches = expand_mirrored_column_matches(
                self._flat_matches, self.num_views, None, num_keypoints
            )
        resolved = [
            _resolve_indices(m, num_keypoints, f"mirrored_column_matches[{v}]")
            for v, m in enumerate(matches)
        ]
        return None, resolved

    def format_data(self, labels: Any) -> np.ndarray:
        """Formats a label array exactly as the fit does, (R, D) float32."""
        frames = _as_frames(_to_numpy(labels, "labels"), self.coords_dim)
        columns, matches = self._resolve_layout(frames.shape[1])
        if self.loss_name == LOSS_NAME_SINGLEVIEW:
            return format_singleview(frames, columns, self.centering_method)
        return format_multiview(frames, matches)

    # -- NaN policy checks ----------------------------------------------------------------

    def _check_labelled(self, frames, data, columns, matches) -> None:
        c = self.coords_dim
        if self.loss_name == LOSS_NAME_SINGLEVIEW:
            raw = (~np.isnan(frames[:, columns, :])).all(-1).sum(0)
            fmt = (~np.isnan(data.reshape(data.shape[0], -1, c))).all(-1).sum(0)
            for j, kp in enumerate(columns):
                if raw[j] <= 1:
                    raise ValueError(
                        f"{self.loss_name}: keypoint {kp} (entry {j} of the PCA columns) is "
                        f"labelled in {raw[j]} of {frames.shape[0]} training frames; the PCA "
                        "needs at least 2. Drop it from columns_for_singleview_pca, or use "
                        "nan_policy='propagate' to reproduce lightning-pose (NaN loss or "
                        "LinAlgError)."
                    )
                if fmt[j] <= 1:
                    raise ValueError(
                        f"{self.loss_name}: after centring ({self.centering_method}) keypoint "
                        f"{kp} is observed in only {fmt[j]} frames: centring drops every frame "
                        "with a missing selected keypoint, and too few complete frames remain. "
                        "Use fewer columns, no centring, or nan_policy='propagate'."
                    )
        else:
            for v, lst in enumerate(matches):
                counts = (~np.isnan(frames[:, lst, :])).all(-1).sum(0)
                for m, kp in enumerate(lst):
                    if counts[m] <= 1:
                        raise ValueError(
                            f"{self.loss_name}: keypoint {kp} (view {v}, body part {m} of "
                            f"mirrored_column_matches) is labelled in {counts[m]} of "
                            f"{frames.shape[0]} training frames; the PCA needs at least 2. "
                            "Drop it from the matches, or use nan_policy='propagate'."
                        )

    # -- fit --------------------------------------------------------------------------------

    def fit(self, labels: Any, key: Any = None) -> PCAFitResult:
        """Fits the PCA on training labels (array or ``tf.data.Dataset``, see
        :func:`labels_from_source`), which must be in the predictions' pixel frame."""
        arr = labels_from_source(labels, key, coords_dim=self.coords_dim)
        frames = _as_frames(arr, self.coords_dim)
        columns, matches = self._resolve_layout(frames.shape[1])
        if self.loss_name == LOSS_NAME_SINGLEVIEW:
            data = format_singleview(frames, columns, self.centering_method)
        else:
            data = format_multiview(frames, matches)
        rows, dim = data.shape
        if rows < dim:
            raise ValueError(f"cannot fit PCA with {rows} samples < {dim} observation dimensions")
        if self.nan_policy == "raise":
            self._check_labelled(frames, data, columns, matches)
            cov, n = nan_covariance(data)
            if not np.all(np.isfinite(cov)):
                i, j = np.argwhere(~np.isfinite(cov))[0]
                raise ValueError(
                    f"{self.loss_name}: the pairwise-complete covariance is not finite: PCA "
                    f"dimensions {i} and {j} (keypoint {i // self.coords_dim} and "
                    f"{j // self.coords_dim} of the formatted vector) are observed together "
                    f"in {int(n[i, j])} training rows; at least 2 are needed. Use "
                    "nan_policy='propagate' to reproduce lightning-pose (LinAlgError)."
                )

        pca = nan_pca(data)
        k = choose_num_components(self.components_to_keep, pca["explained_variance_ratio"], self.loss_name)
        components = pca["components"]
        kept = components[:k].astype(np.float32)
        discarded = components[k:].astype(np.float32)
        num_kept = kept.shape[0]
        logger.info(
            "results of running PCA (%s) on keypoints: kept %d/%d components; explained "
            "variance ratios %s; variance explained by %d components: %.3f",
            self.loss_name, num_kept, dim,
            np.round(pca["explained_variance_ratio"], 3).tolist(), num_kept,
            float(np.sum(pca["explained_variance_ratio"][:num_kept])),
        )

        errors = reprojection_error(data, pca["mean"], kept, self.coords_dim)
        empirical = empirical_epsilon(errors, self.empirical_epsilon_percentile)
        if np.isnan(empirical) and self.nan_policy == "propagate":
            warnings.warn(
                f"{self.loss_name}: every training row has a missing value, so the empirical "
                "epsilon is NaN (All-NaN slice)",
                RuntimeWarning,
                stacklevel=2,
            )
        eps = choose_epsilon(empirical, self.epsilon, self.empirical_epsilon_multiplier)
        if self.epsilon is not None:
            logger.info("using absolute epsilon=%.3f for pca loss; empirical epsilon ignored", eps)
        else:
            logger.info(
                "using empirical epsilon=%.3f * multiplier=%.3f -> total=%.3f for %s loss",
                empirical, self.empirical_epsilon_multiplier, eps, self.loss_name,
            )
        if self.nan_policy == "raise" and np.isnan(eps):
            if self.epsilon is not None:
                raise ValueError(f"{self.loss_name}: epsilon is NaN")
            why = " (centring drops frames with any missing selected keypoint)" if (
                self.centering_method and self.loss_name == LOSS_NAME_SINGLEVIEW) else ""
            raise ValueError(
                f"{self.loss_name}: the empirical epsilon is NaN because every training row "
                f"has a missing value{why}. Give a fixed epsilon, fewer keypoints, or "
                "nan_policy='propagate'."
            )

        self.data_arr = data
        self.result = PCAFitResult(
            loss_name=self.loss_name,
            coords_dim=self.coords_dim,
            num_keypoints=int(frames.shape[1]),
            columns=columns,
            matches=matches,
            centering_method=self.centering_method if self.loss_name == LOSS_NAME_SINGLEVIEW else None,
            mean=pca["mean"],
            kept_eigenvectors=kept,
            discarded_eigenvectors=discarded,
            explained_variance=pca["explained_variance"],
            explained_variance_ratio=pca["explained_variance_ratio"],
            empirical_epsilon=empirical,
            epsilon=eps,
            num_samples=rows,
        )
        self.parameters = self.result.parameters
        return self.result

    __call__ = fit
