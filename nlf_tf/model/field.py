"""The localizer field (NLF §6.2): an MLP from a canonical 3D point to the weights of a 1×1
convolution that localizes that point in the feature map.

Structure: positional encoding of the point (`posenc_dim` features), then `hidden_layers`
Dense(`hidden_size`, GELU) layers and a linear output of size (link_dim + 1)·(depth + 2).
The first layer after the encoding carries the `FirstLayerRegularizer`.

Two encodings (`field_type`):

* ``'gps'`` (NLF's default): the pretrained GPS network of NLF. The point is normalised into
  the bounding box of the canonical tetrahedral-mesh nodes, x = (p − centre)/(max − min) per
  axis with centre = (min + max)/2, then y = x·W_r (W_r [3, F/2], no bias), Fourier features
  [sin y, sin(y + π/2)]/sqrt(F), Dense(H, exact GELU), Dense(O, linear); the first `posenc_dim`
  outputs are kept and each is scaled by 0.1/sqrt(λ_k), λ_k the k-th Laplace–Beltrami
  eigenvalue of the canonical volume (k = 1…posenc_dim; λ_0 = 0 is dropped). In NLF F = 512,
  H = 2048, O = 1024. The network is fine-tuned when `finetune_gps`, else frozen and its output
  gradient-stopped.
* ``'vanilla'``: no assets. The same MLP shape with Dense(F, GELU)/sqrt(F) instead of the
  Fourier layer, random init, normalisation by an explicit box (`canonical_center`,
  `canonical_extent`) and no eigenvalue scaling.

GPS asset folder (`gps_dir`, the `--field_gps_dir` setting). NLF's assets are not public, so
the user provides them; these are the file names we expect:

* ``gps_weights.npz`` — the GPS encoder in our own format: float arrays
  ``W_r`` [3, F/2], ``dense1_kernel`` [F, H], ``dense1_bias`` [H], ``dense2_kernel`` [H, O],
  ``dense2_bias`` [O] (Keras layout: kernels are [inputs, outputs]; O ≥ posenc_dim). Write it
  with `gps_weights_from_arrays` — from NLF's TF SavedModel ``lbo_mlp_512fourier_2048gelu_1024``
  via `gps_arrays_from_tf_savedmodel`, or from NLF's PyTorch state dict
  ``lbo_mlp_512fourier_2048gelu_1024.pt`` (``W_r.weight``, ``dense1.weight``, … as NumPy) with
  ``layout='torch'``.
* ``canonical_nodes3.npy`` — NLF's canonical tetrahedral-mesh nodes [N, 3] (metres); only their
  per-axis min and max are used (the normalisation box).
* ``canonical_eigval3.npy`` — NLF's Laplace–Beltrami eigenvalues [K], ascending,
  K ≥ posenc_dim + 1 (NLF has 1025); the first one is dropped.

The files are read once, when the layer is constructed, and copied into variables at build:
the encoder as (non-)trainable Dense weights, the box and the scales 0.1/sqrt(λ_k) as
non-trainable float32 variables ('gps_box_center', 'gps_box_extent', 'gps_eigval_scales').
Checkpoints and saved weights therefore carry everything; a layer made with
`gps_from_checkpoint=True` (what `get_config` emits) reads no files and must get its weights
from a checkpoint — until then its box is NaN, so every output is NaN rather than silently
wrong.

Dtypes: the box normalisation is done in float32; the normalised point is then cast to the
layer's compute dtype and the encoder runs in that dtype (float16 under mixed_float16, like
NLF, which casts the points to float16 before the encoder). NLF rounds the raw points to float16
before normalising; we round after normalising, which is slightly finer and identical in
structure. Under a float32 policy everything is float32 (NLF would still round the points to
float16).
"""

import dataclasses
import math
import os

import keras
import numpy as np
import tensorflow as tf

# Default normalisation box of the canonical space for the vanilla field, in metres. NLF
# derives it from the bounding box of its canonical body mesh nodes (a stretched, symmetric
# T-pose). Without those assets we use a 2 m cube centred at the origin, which contains a
# standing human of ordinary size (arm span and height both < 2 m) whose canonical origin is
# near the pelvis, and maps it into [−0.5, 0.5]³ as NLF's normalisation does for its own box.
DEFAULT_CANONICAL_CENTER = (0.0, 0.0, 0.0)
DEFAULT_CANONICAL_EXTENT = (2.0, 2.0, 2.0)

FIELD_TYPES = ('gps', 'vanilla')

# File names inside the GPS asset folder (--field_gps_dir).
GPS_WEIGHTS_FILE = 'gps_weights.npz'
GPS_NODES_FILE = 'canonical_nodes3.npy'
GPS_EIGVAL_FILE = 'canonical_eigval3.npy'
GPS_DIR_FLAG = '--field_gps_dir'
GPS_WEIGHT_NAMES = ('W_r', 'dense1_kernel', 'dense1_bias', 'dense2_kernel', 'dense2_bias')

# NLF multiplies the GPS features by 0.1/sqrt(λ_k).
EIGVAL_SCALE_FACTOR = 0.1
# Standard deviation of NLF's initial W_r (only matters when the GPS weights come from a
# checkpoint that is then restored, or for a fresh layer used without loading).
GPS_W_R_INIT_STDDEV = 12.0


# ---------------------------------------------------------------------------------------------
# GPS assets


@dataclasses.dataclass(frozen=True)
class GPSAssets:
    """The GPS field's values, read from the asset files.

    Attributes:
        weights: dict of float32 arrays keyed by GPS_WEIGHT_NAMES, Keras layout, with the
            encoder output already cut to `posenc_dim` columns.
        box_center, box_extent: float32 [3]; x = (p − box_center)/box_extent.
        eigval_scales: float32 [posenc_dim], 0.1/sqrt(λ_k) for k = 1…posenc_dim.
    """
    weights: dict
    box_center: np.ndarray
    box_extent: np.ndarray
    eigval_scales: np.ndarray


def gps_asset_paths(gps_dir=None, weights_path=None, nodes_path=None, eigval_path=None):
    """The three asset paths: explicit paths win over `gps_dir`/<standard file name>.

    Raises ValueError if a path cannot be determined and FileNotFoundError naming the file
    (and the flag) if it does not exist.
    """
    gps_dir = gps_dir or None
    explicit = {GPS_WEIGHTS_FILE: (weights_path or None, 'gps_weights_path'),
                GPS_NODES_FILE: (nodes_path or None, 'gps_nodes_path'),
                GPS_EIGVAL_FILE: (eigval_path or None, 'gps_eigval_path')}
    paths = {}
    for file_name, (path, arg_name) in explicit.items():
        if path is not None:
            paths[file_name] = os.fspath(path)
            if not os.path.isfile(paths[file_name]):
                raise FileNotFoundError(
                    f'GPS field asset {file_name!r} not found: {arg_name}={paths[file_name]!r} '
                    'is not a file')
        elif gps_dir is not None:
            paths[file_name] = os.path.join(os.fspath(gps_dir), file_name)
            if not os.path.isfile(paths[file_name]):
                raise FileNotFoundError(
                    f'GPS field asset {file_name!r} not found in {GPS_DIR_FLAG}={gps_dir!r} '
                    f'(looked for {paths[file_name]!r}). The folder must hold '
                    f'{GPS_WEIGHTS_FILE}, {GPS_NODES_FILE} and {GPS_EIGVAL_FILE}; see '
                    'nlf_tf.model.field for their format.')
        else:
            raise ValueError(
                f"field_type='gps' needs its asset files: set {GPS_DIR_FLAG} to the folder "
                f'holding {GPS_WEIGHTS_FILE}, {GPS_NODES_FILE} and {GPS_EIGVAL_FILE} '
                f'({file_name!r} has no path; {arg_name} is not set either)')
    return paths


def canonical_box_from_nodes(nodes, source='nodes'):
    """(centre, extent) float32 [3] of NLF's normalisation box: centre = (min + max)/2 and
    extent = max − min per axis of the nodes [N, 3]."""
    nodes = np.asarray(nodes)
    if nodes.ndim != 2 or nodes.shape[1] != 3 or nodes.shape[0] < 2:
        raise ValueError(f'{source}: canonical nodes must have shape [N >= 2, 3], got '
                         f'{nodes.shape}')
    nodes = nodes.astype(np.float64)
    if not np.all(np.isfinite(nodes)):
        raise ValueError(f'{source}: canonical nodes must be finite')
    mini, maxi = nodes.min(axis=0), nodes.max(axis=0)
    extent = maxi - mini
    if np.any(extent <= 0):
        raise ValueError(f'{source}: canonical nodes span zero width along an axis '
                         f'(max − min = {extent.tolist()})')
    return ((mini + maxi) / 2).astype(np.float32), extent.astype(np.float32)


def eigval_scales_from_eigvals(eigvals, posenc_dim, source='eigenvalues'):
    """float32 [posenc_dim]: 0.1/sqrt(λ_k) for k = 1…posenc_dim (λ_0, the zero eigenvalue of
    the constant eigenfunction, is dropped)."""
    eigvals = np.asarray(eigvals)
    if eigvals.ndim != 1:
        raise ValueError(f'{source}: eigenvalues must be a 1-D array, got shape '
                         f'{eigvals.shape}')
    if eigvals.shape[0] < posenc_dim + 1:
        raise ValueError(
            f'{source}: needs at least posenc_dim + 1 = {posenc_dim + 1} eigenvalues (the '
            f'first is dropped), got {eigvals.shape[0]}')
    used = eigvals[1:posenc_dim + 1].astype(np.float64)
    if not np.all(np.isfinite(used)) or np.any(used <= 0):
        raise ValueError(f'{source}: eigenvalues 1…{posenc_dim} must be finite and positive')
    return (EIGVAL_SCALE_FACTOR / np.sqrt(used)).astype(np.float32)


def gps_weights_from_arrays(W_r, dense1_kernel, dense1_bias, dense2_kernel,  # noqa: N803
                            dense2_bias, path=None, layout='keras'):
    """Checks the five GPS encoder arrays and returns them as a dict of float32 arrays in Keras
    layout (the `gps_weights.npz` format); with `path` also writes that file.

    Args:
        W_r: the Fourier projection, [3, F/2] (Keras) or [F/2, 3] (torch); no bias.
        dense1_kernel, dense1_bias: [F, H] (Keras) or [H, F] (torch), and [H].
        dense2_kernel, dense2_bias: [H, O] (Keras) or [O, H] (torch), and [O].
        path: output file (conventionally <gps_dir>/gps_weights.npz), or None.
        layout: 'keras' (kernels are [inputs, outputs], as tf.keras get_weights() of NLF's
            GPSBaseModel) or 'torch' (nn.Linear weights [outputs, inputs], as NLF's PyTorch
            state dict 'W_r.weight', 'dense1.weight', 'dense1.bias', 'dense2.weight',
            'dense2.bias'); torch kernels are transposed.
    """
    if layout not in ('keras', 'torch'):
        raise ValueError(f"layout must be 'keras' or 'torch', got {layout!r}")
    arrays = {'W_r': W_r, 'dense1_kernel': dense1_kernel, 'dense1_bias': dense1_bias,
              'dense2_kernel': dense2_kernel, 'dense2_bias': dense2_bias}
    out = {}
    for name, value in arrays.items():
        value = np.asarray(value)
        if not np.issubdtype(value.dtype, np.floating):
            raise ValueError(f'GPS weight {name} must be a float array, got dtype {value.dtype}')
        if name == 'W_r' or name.endswith('kernel'):
            if value.ndim != 2:
                raise ValueError(f'GPS weight {name} must be 2-D, got shape {value.shape}')
            if layout == 'torch':
                value = value.T
        elif value.ndim != 1:
            raise ValueError(f'GPS weight {name} must be 1-D, got shape {value.shape}')
        value = value.astype(np.float32)
        if not np.all(np.isfinite(value)):
            raise ValueError(f'GPS weight {name} must be finite')
        out[name] = np.ascontiguousarray(value)
    _check_gps_weight_shapes(out, source='gps_weights_from_arrays')
    if path is not None:
        path = os.fspath(path)
        # np.savez appends '.npz' to other names; require it so the written name is `path`.
        if not path.endswith('.npz'):
            raise ValueError(f"path must end with '.npz', got {path!r}")
        np.savez(path, **out)
    return out


def _check_gps_weight_shapes(w, source):
    """The five arrays (Keras layout) must chain: [3, F/2] → [F, H] + [H] → [H, O] + [O]."""
    w_r, k1, b1, k2, b2 = (w[name] for name in GPS_WEIGHT_NAMES)
    half = w_r.shape[1]
    expected = {'W_r': (3, half), 'dense1_kernel': (2 * half, k1.shape[1]),
                'dense1_bias': (k1.shape[1],), 'dense2_kernel': (k1.shape[1], k2.shape[1]),
                'dense2_bias': (k2.shape[1],)}
    for name, shape in expected.items():
        if w[name].shape != shape:
            raise ValueError(
                f'{source}: GPS weight {name} has shape {w[name].shape}, expected {shape} '
                f'(Keras layout: W_r [3, F/2], dense1_kernel [F, H], dense1_bias [H], '
                f'dense2_kernel [H, O], dense2_bias [O]; got W_r {w_r.shape}, dense1_kernel '
                f'{k1.shape}, dense1_bias {b1.shape}, dense2_kernel {k2.shape}, dense2_bias '
                f'{b2.shape})')


def read_gps_weights(path):
    """Reads a `gps_weights.npz` file -> dict of float32 arrays (checked)."""
    with np.load(os.fspath(path), allow_pickle=False) as data:
        names = sorted(data.files)
        if sorted(GPS_WEIGHT_NAMES) != names:
            raise ValueError(
                f'{path}: a GPS weight file must hold exactly the arrays {list(GPS_WEIGHT_NAMES)}'
                f', got {names}')
        arrays = {name: data[name] for name in GPS_WEIGHT_NAMES}
    try:
        return gps_weights_from_arrays(**arrays)
    except ValueError as e:
        raise ValueError(f'{path}: {e}') from None


def gps_arrays_from_tf_savedmodel(saved_model_dir):
    """The GPS encoder arrays (Keras layout, as `gps_weights_from_arrays` kwargs) from a TF
    SavedModel folder such as NLF's `lbo_mlp_512fourier_2048gelu_1024`, read from its variables
    checkpoint (no Keras 2 needed).

    The five variables are identified by shape: the only [3, F/2] kernel is W_r, then the
    [F, H] kernel, [H] bias, [H, O] kernel and [O] bias. Use `gps_weights_from_arrays(...,
    path=...)` to write the npz. Only checked on synthetic SavedModels with the same variables.
    """
    prefix = os.path.join(os.fspath(saved_model_dir), 'variables', 'variables')
    if not os.path.exists(prefix + '.index'):
        raise FileNotFoundError(f'{saved_model_dir!r} is not a SavedModel folder with variables '
                                f'(no {prefix + ".index"!r})')
    reader = tf.train.load_checkpoint(prefix)
    shapes = {
        key: tuple(shape) for key, shape in reader.get_variable_to_shape_map().items()
        if key.endswith('.ATTRIBUTES/VARIABLE_VALUE') and 'OPTIMIZER_SLOT' not in key
        and not key.startswith(('optimizer/', 'save_counter'))}

    def unique(condition, what):
        keys = [k for k, s in shapes.items() if condition(s)]
        if len(keys) != 1:
            raise ValueError(
                f'{saved_model_dir}: expected exactly one {what} variable, found {len(keys)} '
                f'among {sorted(shapes.items())}')
        return keys[0]

    key_w_r = unique(lambda s: len(s) == 2 and s[0] == 3, 'W_r [3, F/2]')
    fourier = 2 * shapes[key_w_r][1]
    key_k1 = unique(lambda s: len(s) == 2 and s[0] == fourier, f'dense1 kernel [{fourier}, H]')
    hidden = shapes[key_k1][1]
    key_k2 = unique(lambda s: len(s) == 2 and s[0] == hidden, f'dense2 kernel [{hidden}, O]')
    out_dim = shapes[key_k2][1]
    if out_dim == hidden:
        raise ValueError(f'{saved_model_dir}: H == O = {hidden}; the biases cannot be told '
                         'apart by shape')
    key_b1 = unique(lambda s: s == (hidden,), f'dense1 bias [{hidden}]')
    key_b2 = unique(lambda s: s == (out_dim,), f'dense2 bias [{out_dim}]')
    return {name: np.asarray(reader.get_tensor(key), np.float32) for name, key in zip(
        GPS_WEIGHT_NAMES, (key_w_r, key_k1, key_b1, key_k2, key_b2))}


def load_gps_assets(posenc_dim, gps_dir=None, weights_path=None, nodes_path=None,
                    eigval_path=None, encoder_width=None, encoder_hidden=None):
    """Reads and checks the three GPS asset files -> GPSAssets (encoder cut to posenc_dim).
    `encoder_width` / `encoder_hidden` (F, H), if given, must match the weight file."""
    paths = gps_asset_paths(gps_dir, weights_path, nodes_path, eigval_path)
    weights_file = paths[GPS_WEIGHTS_FILE]
    weights = read_gps_weights(weights_file)
    fourier, hidden = weights['dense1_kernel'].shape
    out_dim = weights['dense2_kernel'].shape[1]
    for arg_name, expected, actual in [('encoder_width (Fourier features F)', encoder_width,
                                        fourier),
                                       ('encoder_hidden (H)', encoder_hidden, hidden)]:
        if expected is not None and int(expected) != actual:
            raise ValueError(f'{weights_file}: the GPS encoder has {actual} for {arg_name}, '
                             f'the field was configured with {expected}')
    if out_dim < posenc_dim:
        raise ValueError(f'{weights_file}: the GPS encoder has {out_dim} outputs, fewer than '
                         f'posenc_dim = {posenc_dim}')
    # Keeping the first posenc_dim outputs = keeping the first posenc_dim output columns.
    weights['dense2_kernel'] = np.ascontiguousarray(weights['dense2_kernel'][:, :posenc_dim])
    weights['dense2_bias'] = np.ascontiguousarray(weights['dense2_bias'][:posenc_dim])

    nodes_file = paths[GPS_NODES_FILE]
    box_center, box_extent = canonical_box_from_nodes(
        np.load(nodes_file, allow_pickle=False), source=nodes_file)
    eigval_file = paths[GPS_EIGVAL_FILE]
    scales = eigval_scales_from_eigvals(
        np.load(eigval_file, allow_pickle=False), posenc_dim, source=eigval_file)
    return GPSAssets(weights, box_center, box_extent, scales)


# ---------------------------------------------------------------------------------------------
# Layers


@keras.saving.register_keras_serializable(package='nlf_tf')
class FirstLayerRegularizer(keras.regularizers.Regularizer):
    """R(W) = factor · (1/n) · Σ_{i<n} Σ_j W_ij²: the mean over the first n input rows of the
    kernel of their squared norm (NLF's `FirstRegul`; n = posenc_dim, so all rows here)."""

    def __init__(self, n_regularized, factor):
        n_regularized = int(n_regularized)
        if n_regularized <= 0:
            raise ValueError(f'n_regularized must be positive, got {n_regularized}')
        self.n_regularized = n_regularized
        self.factor = float(factor)

    def __call__(self, x):
        rows = x[:self.n_regularized]
        # Dividing by the configured n (not the actual row count) matches the formula even if
        # the kernel had fewer rows; here they are always equal.
        return (tf.cast(self.factor / self.n_regularized, x.dtype)
                * tf.reduce_sum(tf.square(rows)))

    def get_config(self):
        return {'n_regularized': self.n_regularized, 'factor': self.factor}


@keras.saving.register_keras_serializable(package='nlf_tf')
class LocalizerField(keras.layers.Layer):
    """Canonical points [..., 3] (float32, metres) -> per-point dynamic conv weights
    [..., (link_dim + 1)·(depth + 2)] in the layer's compute dtype.

    Layout of the output (used by the heatmap head): flat index i·(depth+2) + j, i < link_dim
    the kernel of input channel i for output channel j, i = link_dim the bias.

    Args:
        posenc_dim: size of the positional encoding (NLF `field_posenc_dim`).
        hidden_layers, hidden_size: the hidden Dense layers after the encoding.
        link_dim: channels of the link layer (the dynamic kernel's input channels).
        depth: depth bins (output channels = depth + 2).
        eigval_regul: factor of the first-layer regulariser (NLF `lbo_eigval_regul`).
        canonical_center, canonical_extent: (3,) normalisation box of the vanilla field,
            x = (p − centre)/extent. The GPS field takes its box from the nodes file and
            refuses non-default values here.
        field_type: 'gps' or 'vanilla' (see the module docstring).
        encoder_width, encoder_hidden: F and H of the encoder (512, 2048 in NLF); for 'gps' they
            must match the weight file (F even).
        finetune_gps: train the encoder; if False its variables are non-trainable and its
            output gradient-stopped (as NLF, this applies to the vanilla encoder too).
        gps_dir: folder with the GPS assets (`--field_gps_dir`), see the module docstring.
        gps_weights_path, gps_nodes_path, gps_eigval_path: explicit asset paths, overriding
            the respective file of `gps_dir`.
        gps_from_checkpoint: build the GPS field without reading files; all its values must
            then be restored from a checkpoint or weights file (outputs are NaN until then).
    """

    def __init__(self, posenc_dim=1024, hidden_layers=1, hidden_size=384, link_dim=512,
                 depth=8, eigval_regul=1e-4, canonical_center=DEFAULT_CANONICAL_CENTER,
                 canonical_extent=DEFAULT_CANONICAL_EXTENT, field_type='vanilla',
                 encoder_width=512, encoder_hidden=2048, finetune_gps=True, gps_dir=None,
                 gps_weights_path=None, gps_nodes_path=None, gps_eigval_path=None,
                 gps_from_checkpoint=False, **kwargs):
        # Points stay float32 until normalised; the Dense sublayers then cast to compute dtype.
        kwargs.setdefault('autocast', False)
        super().__init__(**kwargs)
        if field_type not in FIELD_TYPES:
            raise ValueError(f'field_type must be one of {FIELD_TYPES}, got {field_type!r}')
        for arg_name, value in [('posenc_dim', posenc_dim), ('hidden_size', hidden_size),
                                ('link_dim', link_dim), ('depth', depth),
                                ('encoder_width', encoder_width),
                                ('encoder_hidden', encoder_hidden)]:
            if int(value) <= 0:
                raise ValueError(f'LocalizerField {arg_name} must be positive, got {value}')
        if int(hidden_layers) < 0:
            raise ValueError(f'LocalizerField hidden_layers must be >= 0, got {hidden_layers}')
        self.posenc_dim = int(posenc_dim)
        self.hidden_layers = int(hidden_layers)
        self.hidden_size = int(hidden_size)
        self.link_dim = int(link_dim)
        self.depth = int(depth)
        self.eigval_regul = float(eigval_regul)
        self.canonical_center = _as_vec3(canonical_center, 'canonical_center')
        self.canonical_extent = _as_vec3(canonical_extent, 'canonical_extent')
        if any(e <= 0 for e in self.canonical_extent):
            raise ValueError(f'canonical_extent must be positive, got {self.canonical_extent}')
        self.field_type = field_type
        self.encoder_width = int(encoder_width)
        self.encoder_hidden = int(encoder_hidden)
        self.finetune_gps = bool(finetune_gps)
        self.gps_from_checkpoint = bool(gps_from_checkpoint)
        self.out_dim = (self.link_dim + 1) * (self.depth + 2)

        any_path = any(p for p in (gps_dir, gps_weights_path, gps_nodes_path, gps_eigval_path))
        self._gps_assets = None
        if field_type == 'gps':
            if self.encoder_width % 2:
                raise ValueError('LocalizerField encoder_width (Fourier features) must be even '
                                 f"for field_type='gps', got {self.encoder_width}")
            if (self.canonical_center != DEFAULT_CANONICAL_CENTER
                    or self.canonical_extent != DEFAULT_CANONICAL_EXTENT):
                raise ValueError(
                    "canonical_center/canonical_extent apply to field_type='vanilla' only; the "
                    f'GPS field takes its box from {GPS_NODES_FILE}')
            if self.gps_from_checkpoint:
                if any_path:
                    raise ValueError('gps_from_checkpoint=True reads no asset files; do not '
                                     'also pass gps_dir or gps_*_path')
            else:
                self._gps_assets = load_gps_assets(
                    self.posenc_dim, gps_dir, gps_weights_path, gps_nodes_path,
                    gps_eigval_path, encoder_width=self.encoder_width,
                    encoder_hidden=self.encoder_hidden)
        elif any_path or self.gps_from_checkpoint:
            raise ValueError("gps_dir, gps_*_path and gps_from_checkpoint apply to "
                             f"field_type='gps' only, got field_type={field_type!r}")

        # keras 'gelu' is the exact (erf) form, as tf.nn.gelu's default in NLF.
        if field_type == 'gps':
            # W_r: the learnable Fourier frequencies.
            self.encoder_in = keras.layers.Dense(
                self.encoder_width // 2, use_bias=False,
                kernel_initializer=keras.initializers.RandomNormal(stddev=GPS_W_R_INIT_STDDEV),
                trainable=self.finetune_gps, name='encoder_in')
        else:
            self.encoder_in = keras.layers.Dense(
                self.encoder_width, activation='gelu', trainable=self.finetune_gps,
                name='encoder_in')
        self.encoder_hidden_layer = keras.layers.Dense(
            self.encoder_hidden, activation='gelu', trainable=self.finetune_gps,
            name='encoder_hidden')
        self.encoder_out = keras.layers.Dense(
            self.posenc_dim, trainable=self.finetune_gps, name='encoder_out')

        regularizer = FirstLayerRegularizer(self.posenc_dim, self.eigval_regul)
        # One attribute per hidden layer (not a list): tf.train.Checkpoint does not see layers
        # inside the lists that Keras 3 tracks.
        for i in range(self.hidden_layers):
            setattr(self, f'hidden_{i}', keras.layers.Dense(
                self.hidden_size, activation='gelu', kernel_initializer='glorot_uniform',
                bias_initializer='zeros', kernel_regularizer=regularizer if i == 0 else None,
                name=f'hidden_{i}'))
        self.output_layer = keras.layers.Dense(
            self.out_dim, kernel_initializer='glorot_uniform', bias_initializer='zeros',
            kernel_regularizer=None if self.hidden_layers else regularizer, name='output')

    @property
    def hidden_dense(self):
        """The hidden Dense layers, in order."""
        return [getattr(self, f'hidden_{i}') for i in range(self.hidden_layers)]

    @property
    def encoder_layers(self):
        """The positional-encoding network's Dense layers (W_r / first, hidden, output)."""
        return [self.encoder_in, self.encoder_hidden_layer, self.encoder_out]

    def build(self, input_shape=None):
        self.encoder_in.build((None, 3))
        self.encoder_hidden_layer.build((None, self.encoder_width))
        self.encoder_out.build((None, self.encoder_hidden))
        width = self.posenc_dim
        for layer in self.hidden_dense:
            layer.build((None, width))
            width = self.hidden_size
        self.output_layer.build((None, width))
        if self.field_type == 'gps':
            self._build_gps_variables()

    def _build_gps_variables(self):
        # Attributes (not only Keras' internal lists) so tf.train.Checkpoint tracks them.
        def constant(shape, name):
            return self.add_weight(shape=shape, initializer='zeros', dtype='float32',
                                   trainable=False, autocast=False, name=name)

        self.gps_box_center = constant((3,), 'gps_box_center')
        self.gps_box_extent = constant((3,), 'gps_box_extent')
        self.gps_eigval_scales = constant((self.posenc_dim,), 'gps_eigval_scales')
        assets = self._gps_assets
        if assets is None:
            # Placeholders until a checkpoint is restored: NaN makes a forgotten restore loud.
            for variable in (self.gps_box_center, self.gps_box_extent, self.gps_eigval_scales):
                variable.assign(np.full(variable.shape, np.nan, np.float32))
            return
        self.gps_box_center.assign(assets.box_center)
        self.gps_box_extent.assign(assets.box_extent)
        self.gps_eigval_scales.assign(assets.eigval_scales)
        w = assets.weights
        self.encoder_in.kernel.assign(w['W_r'])
        self.encoder_hidden_layer.kernel.assign(w['dense1_kernel'])
        self.encoder_hidden_layer.bias.assign(w['dense1_bias'])
        self.encoder_out.kernel.assign(w['dense2_kernel'])
        self.encoder_out.bias.assign(w['dense2_bias'])
        self._gps_assets = None  # the variables hold the values now

    def positional_encoding(self, points):
        """[..., 3] float32 -> [..., posenc_dim] in the compute dtype (for 'gps' including the
        eigenvalue scaling)."""
        if not self.built:  # a direct call (not via __call__) on a fresh layer
            self.build((None, 3))
        dtype = self.compute_dtype
        points = tf.cast(points, tf.float32)
        factor = tf.cast(1.0 / math.sqrt(self.encoder_width), dtype)
        if self.field_type == 'gps':
            x = (points - self.gps_box_center) / self.gps_box_extent
            y = self.encoder_in(tf.cast(x, dtype))
            x = tf.sin(tf.concat([y, y + math.pi / 2], axis=-1)) * factor
        else:
            center = tf.constant(self.canonical_center, tf.float32)
            extent = tf.constant(self.canonical_extent, tf.float32)
            x = self.encoder_in(tf.cast((points - center) / extent, dtype)) * factor
        x = self.encoder_out(self.encoder_hidden_layer(x))
        if not self.finetune_gps:
            x = tf.stop_gradient(x)
        if self.field_type == 'gps':
            x = x * tf.cast(self.gps_eigval_scales, x.dtype)
        return x

    def call(self, points):
        x = self.positional_encoding(points)
        for layer in self.hidden_dense:
            x = layer(x)
        return tf.cast(self.output_layer(x), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.out_dim,)

    def get_config(self):
        # No asset paths and no arrays: a GPS field rebuilt from this config expects all its
        # values (encoder, box, eigenvalue scales) from the saved weights.
        return {
            **super().get_config(),
            'posenc_dim': self.posenc_dim,
            'hidden_layers': self.hidden_layers,
            'hidden_size': self.hidden_size,
            'link_dim': self.link_dim,
            'depth': self.depth,
            'eigval_regul': self.eigval_regul,
            'canonical_center': list(self.canonical_center),
            'canonical_extent': list(self.canonical_extent),
            'field_type': self.field_type,
            'encoder_width': self.encoder_width,
            'encoder_hidden': self.encoder_hidden,
            'finetune_gps': self.finetune_gps,
            'gps_from_checkpoint': self.field_type == 'gps',
        }


def _as_vec3(value, arg_name):
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.shape != (3,) or not np.all(np.isfinite(arr)):
        raise ValueError(f'{arg_name} must be 3 finite numbers, got {value!r}')
    return tuple(float(v) for v in arr)
