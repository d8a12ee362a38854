"""Backbone networks: float images in [0, 1] -> stride-32 feature maps (NLF §6.1).

The networks come from `keras.applications` with random initialisation (`weights=None`; nothing
is ever downloaded), without the classification top and without pooling. Each is preceded by an
`ImagePreprocessing` layer that maps [0, 1] images to the value range the network was designed
for, as NLF's `build_backbone` does with its Lambda layer:

* EfficientNetV2 and ResNet…V2: `2x − 1` (the network's own preprocessing is switched off);
* MobileNetV3: `255·x`, followed by the network's own built-in rescaling (which maps [0, 255] to
  [−1, 1]);
* ResNet (v1): Caffe-style `255·x − (103.939, 116.779, 123.68)`, *without* the RGB→BGR channel
  swap, exactly as NLF does.

Pixel grid of the feature map (`centered_stride`). Pixel i of the input has its centre at
coordinate i. The heatmap head (§6.3) assumes that feature cell j is centred on input pixel
`32j + 16` with a centred stride and on `32j` without. Where a cell is centred follows from the
(kernel, stride, padding-before) of every strided layer: a stride-s layer with kernel k and
`p` padded entries before the input maps output index o to input position `s·o + (k−1)/2 − p`.
The stock keras.applications networks give (measured both analytically, `feature_cell_grid`,
and from input gradients of a feature cell, see the tests):

* EfficientNetV2 and MobileNetV3: 'same' padding (or MobileNet's equivalent explicit pads) puts
  (k−3)/2 zeros before an even-sized input of every stride-2 layer, i.e. a shift of +1 input
  unit per stride-2 layer; cell j is centred on 1 + 2 + 4 + 8 + 16 = **32j + 31**.
* ResNet v1/v2: symmetric explicit pads for the 7×7 stem and the 3×3 pool (and the v2 3×3
  stride-2 convs); the other stride-2 layers are 1×1 ('valid'); cell j is centred on **32j**.

`build_backbone` therefore rebuilds the network graph (`keras.models.clone_model` with a
`clone_function` that switches strided layers to 'valid' padding or changes their dedicated
`ZeroPadding2D`, and a `call_function` that inserts explicit padding / cropping layers) so that
every stride-2 layer pads `(k−1)/2` before and after (shift 0), except, with a centred stride,
the stride-2 layer(s) of the last stride-2 stage (input stride 16), which pad `(k−1)/2 − 1`
before and `(k−1)/2 + 1` after (shift +1 unit of 16 px). This is what NLF's own EfficientNetV2
does ((0, 2) instead of (1, 1) for its 3×3 kernels). A 1×1 stride-2 layer (ResNet) gets its
shift from cropping the first row and column (and a zero row/column after, which keeps
`ceil(n/2)` outputs for odd sizes too). Residual shortcuts are shifted together with their main
path, so the grids of all summed tensors agree (verified by `feature_cell_grid`). The rebuilt
network has the same variables and layer names as the stock one (only weightless padding /
cropping layers are added), so weight files of the stock network load by name.

`load_backbone_weights` implements `--load_backbone_from`: it copies weights from a local Keras
weights file or model file layer by layer, matched by layer name and variable shape.
"""

import dataclasses
import logging
import os
import zipfile

import keras
import numpy as np
import tensorflow as tf

_A = keras.applications

# canonical name -> (keras.applications constructor, preprocessing mode, extra constructor kwargs)
_REGISTRY = {
    'efficientnetv2-s': (_A.EfficientNetV2S, 'tf', dict(include_preprocessing=False)),
    'efficientnetv2-m': (_A.EfficientNetV2M, 'tf', dict(include_preprocessing=False)),
    'efficientnetv2-l': (_A.EfficientNetV2L, 'tf', dict(include_preprocessing=False)),
    'efficientnetv2-b0': (_A.EfficientNetV2B0, 'tf', dict(include_preprocessing=False)),
    'efficientnetv2-b1': (_A.EfficientNetV2B1, 'tf', dict(include_preprocessing=False)),
    'efficientnetv2-b2': (_A.EfficientNetV2B2, 'tf', dict(include_preprocessing=False)),
    'efficientnetv2-b3': (_A.EfficientNetV2B3, 'tf', dict(include_preprocessing=False)),
    'mobilenetv3small': (
        _A.MobileNetV3Small, 'scale255', dict(include_preprocessing=True, minimalistic=False)),
    'mobilenetv3large': (
        _A.MobileNetV3Large, 'scale255', dict(include_preprocessing=True, minimalistic=False)),
    'resnet50': (_A.ResNet50, 'caffe', {}),
    'resnet101': (_A.ResNet101, 'caffe', {}),
    'resnet152': (_A.ResNet152, 'caffe', {}),
    'resnet50v2': (_A.ResNet50V2, 'tf', {}),
    'resnet101v2': (_A.ResNet101V2, 'tf', {}),
    'resnet152v2': (_A.ResNet152V2, 'tf', {}),
}

BACKBONE_NAMES = tuple(_REGISTRY)
OUTPUT_STRIDE = 32

# ImageNet channel means (in 0..255) of the Caffe preprocessing; NLF subtracts them from the RGB
# channels in this order, without swapping to BGR.
_CAFFE_MEAN = (103.939, 116.779, 123.68)


def canonical_backbone_name(name):
    """The registry name of `name`: case-insensitive, '_' may stand for '-', and hyphens are
    optional ('efficientnetv2_s', 'EfficientNetV2-S', 'mobilenet_v3_small', 'ResNet50V2').
    Raises ValueError listing the valid names."""
    if not isinstance(name, str):
        raise ValueError(f'backbone must be a string, got {name!r}')
    key = name.strip().lower().replace('_', '-')
    if key in _REGISTRY:
        return key
    stripped = key.replace('-', '')
    for candidate in _REGISTRY:
        if candidate.replace('-', '') == stripped:
            return candidate
    raise ValueError(
        f'Unknown backbone {name!r}; valid names: {", ".join(BACKBONE_NAMES)} '
        '("_" may stand for "-").')


@keras.saving.register_keras_serializable(package='nlf_tf')
class ImagePreprocessing(keras.layers.Layer):
    """Maps images in [0, 1] to a backbone's input range. mode: 'tf' (2x − 1), 'caffe'
    (255x − ImageNet mean, no channel swap), 'scale255' (255x), 'torch' ((x − mean)/std)."""

    MODES = ('tf', 'caffe', 'scale255', 'torch')

    def __init__(self, mode, **kwargs):
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise ValueError(f'ImagePreprocessing mode must be one of {self.MODES}, got {mode!r}')
        self.mode = mode

    def call(self, x):
        dtype = x.dtype
        if self.mode == 'tf':
            return tf.cast(2, dtype) * x - tf.cast(1, dtype)
        if self.mode == 'caffe':
            return tf.cast(255, dtype) * x - tf.constant(_CAFFE_MEAN, dtype)
        if self.mode == 'scale255':
            return tf.cast(255, dtype) * x
        mean = tf.constant((0.485, 0.456, 0.406), dtype)
        std = tf.constant((0.229, 0.224, 0.225), dtype)
        return (x - mean) / std

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), 'mode': self.mode}


def build_backbone(name, proc_side, dtype_policy=None, centered_stride=True):
    """A keras.Model mapping float images [B, S, S, 3] in [0, 1] to features [B, S/32, S/32, C].

    `name`: see `BACKBONE_NAMES` (normalised by `canonical_backbone_name`). `proc_side` S must
    be a multiple of 32; the stride is verified on the built network. The spatial input size is
    left open (None) so the same model also runs at other multiples of 32. `dtype_policy`
    (e.g. 'mixed_float16'): the Keras dtype policy to build with (default: the global policy);
    keras.applications layers take the global policy, so it is set temporarily.
    `centered_stride`: feature cell j is centred on input pixel 32j + 16 if true, else on 32j
    (see the module docstring); the padding of the strided layers is rebuilt accordingly and
    the resulting grid is verified analytically.
    """
    key = canonical_backbone_name(name)
    proc_side = int(proc_side)
    if proc_side <= 0 or proc_side % OUTPUT_STRIDE != 0:
        raise ValueError(
            f'proc_side must be a positive multiple of {OUTPUT_STRIDE}, got {proc_side}')
    constructor, preproc_mode, extra_kwargs = _REGISTRY[key]
    centered_stride = bool(centered_stride)

    previous_policy = keras.config.dtype_policy()
    if dtype_policy is not None:
        keras.config.set_dtype_policy(dtype_policy)
    try:
        network = constructor(
            include_top=False, weights=None, input_shape=(None, None, 3), pooling=None,
            **extra_kwargs)
        network = repad_strided_layers(network, centered_stride)
        inputs = keras.Input(shape=(None, None, 3), name='image')
        preprocessed = ImagePreprocessing(preproc_mode, name='preprocessing')(inputs)
        features = network(preprocessed)
        backbone = keras.Model(inputs, features, name=f'backbone_{key.replace("-", "_")}')
    finally:
        keras.config.set_dtype_policy(previous_policy)

    out_shape = backbone.compute_output_shape((1, proc_side, proc_side, 3))
    expected = proc_side // OUTPUT_STRIDE
    if tuple(out_shape[1:3]) != (expected, expected):
        raise AssertionError(
            f'Backbone {key} has output shape {out_shape} at {proc_side} px; expected a '
            f'{expected}x{expected} map (stride {OUTPUT_STRIDE}).')
    grid = feature_cell_grid(backbone)
    expected_grid = (OUTPUT_STRIDE, OUTPUT_STRIDE // 2 if centered_stride else 0)
    if grid != expected_grid:
        raise AssertionError(
            f'Backbone {key}: feature cell j is centred on pixel {grid[0]}j + {grid[1]}; expected '
            f'{expected_grid[0]}j + {expected_grid[1]} (centered_stride={centered_stride}).')
    return backbone


# ----------------------------------------------------------------------------------------
# Pixel grid of feature maps
# ----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Grid:
    """Index i of a tensor along (height, width) is centred on input pixel offset + stride·i."""
    stride: tuple
    offset: tuple


def _window_params(layer):
    """(kernel, strides, dilation, padding) per spatial axis of a sliding-window layer (conv,
    depthwise/separable conv, pooling), or None for any other layer."""
    if isinstance(layer, (keras.layers.Conv2DTranspose, keras.layers.UpSampling2D)):
        raise ValueError(f'Layer {layer.name!r} upsamples; pixel grids are not supported for it')
    kernel = getattr(layer, 'kernel_size', None) or getattr(layer, 'pool_size', None)
    strides = getattr(layer, 'strides', None)
    if kernel is None or strides is None or getattr(layer, 'padding', None) not in (
            'same', 'valid'):
        return None
    if len(kernel) != 2:
        raise ValueError(f'Layer {layer.name!r} is not a 2D layer (kernel {kernel})')
    dilation = tuple(getattr(layer, 'dilation_rate', (1, 1)))
    return tuple(kernel), tuple(strides), dilation, layer.padding


def _propagate_grid(layer, in_grids, record):
    """Grid of `layer`'s output given the grids of its inputs (None = spatially global)."""
    known = [g for g in in_grids if g is not None]
    if record is not None:
        record[layer.name] = known[0] if known else None
    if not known:
        return None
    if any(g != known[0] for g in known[1:]):
        raise ValueError(
            f'Inputs of layer {layer.name!r} lie on different pixel grids: {known}')
    grid = known[0]
    if isinstance(layer, keras.Model):
        return _trace_grid(layer, grid)
    if isinstance(layer, (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D)):
        return None
    if isinstance(layer, keras.layers.ZeroPadding2D):
        before = (layer.padding[0][0], layer.padding[1][0])
        return _Grid(grid.stride, tuple(o - p * s for o, p, s in zip(
            grid.offset, before, grid.stride)))
    if isinstance(layer, keras.layers.Cropping2D):
        before = (layer.cropping[0][0], layer.cropping[1][0])
        return _Grid(grid.stride, tuple(o + c * s for o, c, s in zip(
            grid.offset, before, grid.stride)))
    window = _window_params(layer)
    if window is None:
        return grid  # pointwise along the spatial axes (activation, norm, add, 1x1 conv, ...)
    kernels, strides, dilations, padding = window
    new_stride, new_offset = [], []
    for scale, offset, k, s, d in zip(grid.stride, grid.offset, kernels, strides, dilations):
        k_eff = (k - 1) * d + 1
        # 'same' pads max(k_eff − s, 0) in total for inputs divisible by s, the smaller half
        # before (TF/Keras convention); the sizes here are multiples of 2 at every stride-2 layer.
        before = max(k_eff - s, 0) // 2 if padding == 'same' else 0
        new_offset.append(offset + scale * ((k_eff - 1) / 2 - before))
        new_stride.append(scale * s)
    return _Grid(tuple(new_stride), tuple(new_offset))


def _trace_grid(model, input_grid, record=None):
    """Propagates `input_grid` through a single-input Functional or Sequential model; returns
    the grid of its output. `record` (dict), if given, receives layer name -> grid of the
    layer's (spatial) input for the layers of `model` itself."""
    if isinstance(model, keras.Sequential):
        grid = input_grid
        for layer in model.layers:
            grid = _propagate_grid(layer, [grid], record)
        return grid
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(f'Model {model.name!r} must have exactly one input and one output')
    grids = {id(model.inputs[0]): input_grid}
    nodes_by_depth = model._nodes_by_depth
    for depth in sorted(nodes_by_depth, reverse=True):
        for node in nodes_by_depth[depth]:
            if not node.operation or node.is_input:
                continue
            if any(id(x) not in grids for x in node.input_tensors):
                continue  # a node of another graph that uses the same layer
            out = _propagate_grid(node.operation, [grids[id(x)] for x in node.input_tensors],
                                  record)
            for x in node.outputs:
                grids[id(x)] = out
    return grids[id(model.outputs[0])]


def feature_cell_grid(model):
    """(stride, offset) such that output cell j of `model` (an image model, e.g. a backbone) is
    centred on input pixel `offset + stride·j` (pixel centres at integer coordinates), from the
    kernel size, stride, dilation and padding of every layer. Assumes channels-last inputs whose
    size is divisible by the total stride. Raises ValueError if rows and columns differ or if
    tensors on different grids are combined (e.g. a shortcut not aligned with its branch)."""
    grid = _trace_grid(model, _Grid((1, 1), (0.0, 0.0)))
    if grid is None:
        raise ValueError(f'The output of {model.name!r} is not spatial')
    if grid.stride[0] != grid.stride[1] or grid.offset[0] != grid.offset[1]:
        raise ValueError(f'Rows and columns of {model.name!r} lie on different grids: {grid}')
    offset = grid.offset[0]
    return int(grid.stride[0]), int(offset) if float(offset).is_integer() else offset


def _sole_consumer_pad_layer(layer):
    """The ZeroPadding2D layer whose output feeds only `layer`, if `layer`'s input is one."""
    nodes = layer._inbound_nodes
    if len(nodes) != 1 or len(nodes[0].parent_nodes) != 1:
        return None
    parent = nodes[0].parent_nodes[0].operation
    if isinstance(parent, keras.layers.ZeroPadding2D) and len(parent._outbound_nodes) == 1:
        return parent
    return None


def repad_strided_layers(network, centered_stride):
    """A copy of the Functional `network` whose stride-2 layers pad explicitly so that output
    cell j is centred on input pixel 32j + 16 (`centered_stride`) or 32j (see the module
    docstring). Returns `network` itself if nothing needs to change. The copy has fresh
    variables with the same names and shapes as the original's."""
    record = {}
    _trace_grid(network, _Grid((1, 1), (0.0, 0.0)), record)

    set_valid = set()   # strided layers whose 'same' padding becomes 'valid'
    new_pads = {}       # name of a dedicated ZeroPadding2D -> its new padding
    inserted = {}       # name of a strided layer -> (before, after) pads to insert before it
    for layer in network.layers:
        window = _window_params(layer)
        if window is None or window[1] == (1, 1):
            continue
        kernels, strides, dilations, padding = window
        if strides != (2, 2) or dilations != (1, 1) or kernels[0] != kernels[1] or (
                kernels[0] % 2 != 1):
            raise ValueError(
                f'Layer {layer.name!r}: only stride-2 layers with square odd kernels and no '
                f'dilation can be re-padded (kernel {kernels}, strides {strides}, dilation '
                f'{dilations})')
        input_stride = record[layer.name].stride[0]
        # Shift by one input unit in the last stride-2 stage only: 16 px at the output stride.
        shift = 1 if centered_stride and 2 * input_stride == OUTPUT_STRIDE else 0
        half = (kernels[0] - 1) // 2
        # Total padding k − 1 gives ceil(n/2) outputs, like 'same'.
        pads = (half - shift, half + shift)
        pad_layer = _sole_consumer_pad_layer(layer) if padding == 'valid' else None
        if pad_layer is not None and min(pads) >= 0:
            if pad_layer.padding != (pads, pads):
                new_pads[pad_layer.name] = (pads, pads)
            continue
        if padding == 'same':
            set_valid.add(layer.name)
        elif pad_layer is not None:  # keep the existing pads, insert the difference
            pads = tuple(p - q for p, q in zip(pads, pad_layer.padding[0]))
        if pads != (0, 0) or padding == 'same':
            inserted[layer.name] = pads

    if not (set_valid or new_pads or inserted):
        return network

    def clone_function(layer):
        config = layer.get_config()
        if layer.name in set_valid:
            config['padding'] = 'valid'
        if layer.name in new_pads:
            config['padding'] = new_pads[layer.name]
        return layer.__class__.from_config(config)

    def call_function(layer, *args, **kwargs):
        if layer.name in inserted:
            args = (_pad_or_crop(args[0], inserted[layer.name], layer),) + args[1:]
        return layer(*args, **kwargs)

    return keras.models.clone_model(
        network, clone_function=clone_function, call_function=call_function)


def _pad_or_crop(x, pads, layer):
    """Applies (before, after) padding on both spatial axes of x; negative entries crop."""
    before, after = pads
    crop = (max(-before, 0), max(-after, 0))
    zero = (max(before, 0), max(after, 0))
    if crop != (0, 0):
        x = keras.layers.Cropping2D(
            (crop, crop), dtype=layer.dtype_policy, name=f'{layer.name}_grid_crop')(x)
    if zero != (0, 0):
        x = keras.layers.ZeroPadding2D(
            (zero, zero), dtype=layer.dtype_policy, name=f'{layer.name}_grid_pad')(x)
    return x


def adjusted_norm_momentum(momentum, grad_accum_steps=1, num_replicas=1):
    """NLF's normaliser momentum adjustment (§6.1): m ← 1 − (1 − m)/n_replicas, then
    m ← m^(1/grad_accum_steps), so that the moving statistics decay per optimizer step as
    intended although they are updated once per replica batch and micro-step."""
    if grad_accum_steps < 1 or num_replicas < 1:
        raise ValueError(
            f'grad_accum_steps and num_replicas must be >= 1, got {grad_accum_steps}, '
            f'{num_replicas}')
    m = 1.0 - (1.0 - float(momentum)) / num_replicas
    return float(np.power(m, 1.0 / grad_accum_steps))


def adjust_batchnorm_momenta(model, grad_accum_steps=1, num_replicas=1):
    """Applies `adjusted_norm_momentum` to every BatchNormalization layer inside `model`
    (recursively), starting from each layer's own momentum. Returns the number of layers
    changed. Call once, right after construction."""
    n_changed = 0
    for layer in _all_sublayers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = adjusted_norm_momentum(layer.momentum, grad_accum_steps, num_replicas)
            n_changed += 1
    return n_changed


def _all_sublayers(layer):
    seen = set()
    stack = [layer]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        stack.extend(getattr(current, '_layers', []))
# ----------------------------------------------------------------------------------------
# --load_backbone_from
# ----------------------------------------------------------------------------------------

logger = logging.getLogger(__name__)

_FLAG = '--load_backbone_from'


@dataclasses.dataclass
class BackboneLoadReport:
    """What `load_backbone_weights` copied. Layer lists are in the backbone's layer order.

    matched_layers: layers that received at least one variable from the file.
    skipped_layers: layer name -> reason, for layers with variables that received none.
    skipped_variables: (layer name, variable name, reason) for variables left unchanged in
      matched layers (e.g. renormalisation clipping variables absent from the file).
    unused_file_layers: names of weight-carrying layers in the file that were not used.
    """
    path: str
    file_format: str
    matched_layers: list
    num_loaded_variables: int
    num_backbone_variables: int
    skipped_layers: dict
    skipped_variables: list
    unused_file_layers: list

    def summary(self):
        lines = [
            f'{_FLAG} {self.path} ({self.file_format}): loaded {self.num_loaded_variables} of '
            f'{self.num_backbone_variables} backbone variables in {len(self.matched_layers)} '
            f'layers; {len(self.skipped_layers)} layers and {len(self.skipped_variables)} '
            f'further variables skipped; {len(self.unused_file_layers)} layers of the file '
            'unused.']
        lines += [f'  skipped layer {name}: {reason}' for name, reason in
                  self.skipped_layers.items()]
        lines += [f'  skipped variable {layer}/{var}: {reason}' for layer, var, reason in
                  self.skipped_variables]
        if self.unused_file_layers:
            lines.append(f'  unused layers of the file: {", ".join(self.unused_file_layers)}')
        return '\n'.join(lines)

    def __str__(self):
        return self.summary()


@dataclasses.dataclass
class _FileLayer:
    name: str
    arrays: list        # np.ndarray per variable, in the saved order
    var_names: list     # variable name per array (legacy h5) or None (Keras 3 files)


def _decode(text):
    return text.decode('utf8') if isinstance(text, bytes) else str(text)


def _read_keras3_weights(h5file):
    """Layers of a Keras 3 weights store (`.weights.h5`, or `model.weights.h5` in a `.keras`
    archive): every '<...>/vars' group holds one layer's own variables as datasets '0', '1', …
    (the layer's trainable then non-trainable variables) and its layer name as attribute."""
    import h5py
    layers = []

    def visit(path, obj):
        parts = path.split('/')
        if (not isinstance(obj, h5py.Group) or parts[-1] != 'vars' or len(parts) < 2
                or parts[0] == 'optimizer'):
            return
        keys = sorted((k for k in obj.keys() if k.isdigit()), key=int)
        if not keys:
            return
        name = _decode(obj.attrs.get('name', parts[-2]))
        layers.append(_FileLayer(name, [np.asarray(obj[k]) for k in keys], [None] * len(keys)))

    h5file.visititems(visit)
    return layers


def _read_legacy_h5(group):
    """Layers of a legacy (Keras 2 style) HDF5 file: a group per top-level layer listed in the
    attribute 'layer_names', each with attribute 'weight_names' ('<layer>/<variable>[:0]'; a
    nested model's group holds the weights of all its layers)."""
    by_name = {}
    for top_name in group.attrs['layer_names']:
        top_group = group[_decode(top_name)]
        for weight_name in top_group.attrs.get('weight_names', []):
            weight_name = _decode(weight_name)
            parts = weight_name.split('/')
            layer_name = parts[-2] if len(parts) >= 2 else _decode(top_name)
            entry = by_name.setdefault(layer_name, _FileLayer(layer_name, [], []))
            entry.arrays.append(np.asarray(top_group[weight_name]))
            entry.var_names.append(parts[-1].split(':')[0])
    return list(by_name.values())


def _read_weight_file(path):
    """(format description, list of _FileLayer) of a local weights or model file."""
    import h5py
    if os.path.isdir(path):
        raise ValueError(
            f'{_FLAG}: {path!r} is a directory (e.g. a TF SavedModel), which is not supported; '
            'pass a .weights.h5, .keras or legacy .h5 file')
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if 'model.weights.h5' not in archive.namelist():
                raise ValueError(
                    f'{_FLAG}: {path!r} is a zip file without model.weights.h5, not a Keras '
                    'model archive')
            data = archive.read('model.weights.h5')
        import io
        with h5py.File(io.BytesIO(data), 'r') as h5file:
            return 'Keras model archive', _read_keras3_weights(h5file)
    if not h5py.is_hdf5(path):
        raise ValueError(
            f'{_FLAG}: {path!r} is neither an HDF5 file (.weights.h5, legacy .h5) nor a Keras '
            'model archive (.keras)')
    with h5py.File(path, 'r') as h5file:
        if 'layer_names' in h5file.attrs:
            return 'legacy HDF5 weights', _read_legacy_h5(h5file)
        if 'model_weights' in h5file and 'layer_names' in h5file['model_weights'].attrs:
            return 'legacy HDF5 model', _read_legacy_h5(h5file['model_weights'])
        return 'Keras weights file', _read_keras3_weights(h5file)


def _own_weights(layer):
    """The variables `layer` owns itself (not through sublayers), in Keras' saving order."""
    sub_ids = {id(w) for sub in getattr(layer, '_layers', []) for w in sub.weights}
    return [w for w in layer.weights if id(w) not in sub_ids]


def _ordered_sublayers(layer, seen=None):
    seen = set() if seen is None else seen
    if id(layer) in seen:
        return
    seen.add(id(layer))
    yield layer
    for sub in getattr(layer, '_layers', []):
        yield from _ordered_sublayers(sub, seen)


def _pair_variables(variables, file_layer):
    """([(variable, array)], [(variable, reason)]) for one layer. If the file records variable
    names, variables are matched by name. Otherwise they are aligned in order with the file's
    arrays by shape: the longest order-preserving sequence of equal-shaped pairs, so that
    variables present on one side only (e.g. the clipping scalars of batch renormalisation)
    are skipped without shifting the others. Arrays are only used if their shape equals the
    variable's."""
    arrays, names = file_layer.arrays, file_layer.var_names
    if all(n is not None for n in names):
        pairs, skipped = [], []
        for var in variables:
            if var.name not in names:
                skipped.append((var, 'not in the file'))
                continue
            array = arrays[names.index(var.name)]
            if tuple(array.shape) != tuple(var.shape):
                skipped.append(
                    (var, f'shape {tuple(var.shape)} != {tuple(array.shape)} in the file'))
            else:
                pairs.append((var, array))
        return pairs, skipped

    n, m = len(variables), len(arrays)
    same = [[tuple(v.shape) == tuple(a.shape) for a in arrays] for v in variables]
    # best[i][j]: most pairs that variables[i:] and arrays[j:] can form in order.
    best = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            best[i][j] = max(best[i + 1][j], best[i][j + 1],
                             best[i + 1][j + 1] + 1 if same[i][j] else 0)
    pairs, matched = [], set()
    i = j = 0
    while i < n and j < m:
        if same[i][j] and best[i][j] == best[i + 1][j + 1] + 1:
            pairs.append((variables[i], arrays[j]))
            matched.add(i)
            i, j = i + 1, j + 1
        elif best[i][j + 1] == best[i][j]:
            j += 1  # this array of the file has no counterpart here
        else:
            i += 1
    skipped = [(var, f'not in the file (no unused array of shape {tuple(var.shape)})')
               for k, var in enumerate(variables) if k not in matched]
    return pairs, skipped


def load_backbone_weights(backbone, path):
    """Initialises `backbone` (a model from `build_backbone`) from a local file (NLF's
    `--load-backbone-from`): a Keras weights file (`.weights.h5`), a Keras model archive
    (`.keras`) or a legacy HDF5 model or weights file (`.h5`) of a network with the same
    architecture, e.g. the stock keras.applications network or a backbone saved by this port.

    Weight-carrying layers are matched by layer name (the rebuilt network keeps the stock layer
    names); within a layer, variables are matched by name where the file records names, else in
    order, and only copied if their shapes agree. Variables and layers without a counterpart
    are left unchanged and reported. The file is read directly (no model is deserialised, no
    custom objects are needed) and nothing is downloaded. Returns a `BackboneLoadReport`, also
    logged. Raises FileNotFoundError if `path` does not exist and ValueError if the file is not
    a supported format or no variable of the backbone matches it (nothing is assigned then).
    """
    if path is None or not str(path).strip():
        raise ValueError(f'{_FLAG}: no file given')
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f'{_FLAG}: backbone weights file {path!r} does not exist')
    file_format, file_layers = _read_weight_file(path)

    by_name = {}
    for file_layer in file_layers:
        by_name.setdefault(file_layer.name, []).append(file_layer)
    used_file_layers = set()
    assignments = []
    matched_layers, skipped_layers, skipped_variables = [], {}, []
    num_variables = 0
    for layer in _ordered_sublayers(backbone):
        variables = _own_weights(layer)
        if not variables:
            continue
        num_variables += len(variables)
        candidates = by_name.get(layer.name, [])
        if not candidates:
            skipped_layers[layer.name] = 'no layer of this name in the file'
            continue
        # With several equally named layers in the file, take the best-fitting one.
        results = [(_pair_variables(variables, c), c) for c in candidates]
        (pairs, skipped), chosen = max(results, key=lambda r: len(r[0][0]))
        if not pairs:
            skipped_layers[layer.name] = (
                f'variable shapes {[tuple(v.shape) for v in variables]} do not match the file\'s '
                f'{[tuple(a.shape) for a in chosen.arrays]}')
            continue
        used_file_layers.add(id(chosen))
        matched_layers.append(layer.name)
        assignments.extend(pairs)
        skipped_variables.extend((layer.name, var.name, reason) for var, reason in skipped)

    if not assignments:
        names = sorted(by_name)
        listed = ', '.join(names[:8]) + (', …' if len(names) > 8 else '')
        raise ValueError(
            f'{_FLAG}: no layer of backbone {backbone.name!r} matches {path!r} by layer name and '
            f'variable shapes ({file_format} with {len(file_layers)} weight-carrying layers: '
            f'{listed or "none"})')
    for var, array in assignments:
        var.assign(np.asarray(array).astype(var.dtype))

    report = BackboneLoadReport(
        path=path, file_format=file_format, matched_layers=matched_layers,
        num_loaded_variables=len(assignments), num_backbone_variables=num_variables,
        skipped_layers=skipped_layers, skipped_variables=skipped_variables,
        unused_file_layers=[f.name for f in file_layers if id(f) not in used_file_layers])
    if skipped_layers or skipped_variables:
        logger.warning('%s', report.summary())
    else:
        logger.info('%s', report.summary())
    return report
