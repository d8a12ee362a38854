"""NLF-S and NLF-L as configured by flags/nlf_s.flags and flags/nlf_l.flags (build + one
inference pass on one tiny batch)."""

import os

import numpy as np
import pytest
from absl import flags

from nlf_tf import config, demo_data, flags as nlf_flags
from nlf_tf.model import NLFModel, heatmap_to_image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cfg_from_flagfile(name):
    fv = nlf_flags.define_flags(flags.FlagValues())
    fv(['prog', f'--flagfile={os.path.join(REPO, "flags", name)}', '--dtype=float32'])
    return config.config_from_flags(fv)


@pytest.mark.parametrize('name, side, feature_side, backbone_channels', [
    ('nlf_s.flags', 256, 8, 1280), ('nlf_l.flags', 384, 12, 1280)])
def test_released_configuration_builds_and_runs(name, side, feature_side, backbone_channels):
    cfg = cfg_from_flagfile(name)
    assert cfg.proc_side == side
    names, init = demo_data.demo_joint_table()
    model = NLFModel(cfg, names, init)
    features = model.backbone.compute_output_shape((1, side, side, 3))
    assert tuple(features) == (1, feature_side, feature_side, backbone_channels)
    field = model.field
    assert field.output_layer.units == (cfg.backbone_link_dim + 1) * (cfg.depth + 2) == 5130
    rng = np.random.default_rng(0)
    k = np.array([[[side, 0, side / 2], [0, side, side / 2], [0, 0, 1]]], np.float32)
    out = model(dict(image=rng.uniform(size=(1, side, side, 3)).astype(np.float32),
                     intrinsics=k, canonical_points=init[None, :4]), training=False)
    # Derived constants follow proc_side: the head's 2D range is [16, side - 16].
    low, high = (float(heatmap_to_image(v, side, 32, True)) for v in (0.0, 1.0))
    assert (low, high) == (16.0, side - 16.0)
    coords2d = out['coords2d'].numpy()
    assert coords2d.shape == (1, 4, 2)
    assert np.all((coords2d >= low - 1e-3) & (coords2d <= high + 1e-3))
    assert np.all(out['uncertainty'].numpy() > 0) and np.isfinite(out['coords3d'].numpy()).all()
