"""(b) reconstruct_absolute + losses on a realistic batch (148 examples x 1024 points, the
original's sub-batch sizes 64+32+20+32): eager vs tf.function vs tf.function(jit_compile).
Prints the speed-up ratios."""

import _common

import numpy as np
import tensorflow as tf

from nlf_tf import config, losses as losses_lib, reconstruction

SIZES = dict(param=64, kp3d=32, dense=20, kp2d=32)


def make_inputs(points=1024, side=256, seed=0):
    rng = np.random.default_rng(seed)
    b = sum(SIZES.values())
    k = np.array([[300, 0, (side - 1) / 2], [0, 300, (side - 1) / 2], [0, 0, 1]], np.float32)
    true3d = rng.normal(scale=0.4, size=(b, points, 3)).astype(np.float32) + [0, 0, 4]
    proj = true3d @ k.T
    true2d = proj[..., :2] / proj[..., 2:]
    head2d = (true2d + rng.normal(scale=3, size=true2d.shape)).astype(np.float32)
    head3d = (true3d - true3d.mean(1, keepdims=True)
              + rng.normal(scale=0.02, size=true3d.shape)).astype(np.float32)
    uncert = rng.uniform(0.05, 0.5, size=(b, points)).astype(np.float32)
    validity = rng.uniform(size=(b, points)) > 0.1
    return dict(head2d=head2d, head3d=head3d, uncert=uncert, validity=validity,
                intrinsics=np.repeat(k[None], b, 0), true3d=true3d.astype(np.float32),
                true2d=true2d.astype(np.float32))


def make_fn(cfg):
    def fn(head2d, head3d, uncert, validity, intrinsics, true3d, true2d):
        coords = reconstruction.reconstruct_absolute(
            head2d, head3d, intrinsics, mix_3d_inside_fov=0.5, point_validity_mask=validity,
            border_factor1=1, border_factor2=0.55, mix_based_on_3d=False,
            **losses_lib.fov_kwargs(cfg))
        n3d = SIZES['param'] + SIZES['kp3d']
        inps = dict(coords3d_true=true3d[:n3d], point_validity=validity[:n3d],
                    root_index=tf.zeros([n3d], tf.int32), intrinsics=intrinsics[:n3d])
        preds = dict(coords3d_abs=coords[:n3d], uncert=uncert[:n3d])
        _, total3d = losses_lib.compute_loss_with_3d_gt(inps, preds, cfg, tf.constant(0, tf.int64))
        inps2 = dict(coords2d_true=true2d[n3d:], point_validity=validity[n3d:],
                     intrinsics=intrinsics[n3d:])
        preds2 = dict(coords3d_abs=coords[n3d:], uncert=uncert[n3d:])
        total2d = losses_lib.compute_loss_with_2d_gt(inps2, preds2, cfg)
        return total3d + total2d
    return fn


def main(repeats=7):
    cfg = config.default_config(proc_side=256)
    inputs = {k: tf.constant(v) for k, v in make_inputs().items()}
    fn = make_fn(cfg)
    variants = dict(eager=fn, function=tf.function(fn),
                    xla=tf.function(fn, jit_compile=True))
    results = {}
    for name, f in variants.items():
        results[name] = _common.timed(lambda: f(**inputs).numpy(), repeats)
        print(f'{name:9s} {results[name] * 1e3:8.1f} ms')
    values = {name: float(f(**inputs)) for name, f in variants.items()}
    print('losses agree:', values)
    print(f'RATIO eager/function = {results["eager"] / results["function"]:.2f}, '
          f'function/xla = {results["function"] / results["xla"]:.2f}')


if __name__ == '__main__':
    main()
