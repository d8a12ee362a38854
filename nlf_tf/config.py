"""The settings of a training run: one table, shared by the absl flags and the library.

Every setting has the original NLF flag name (with underscores), type, default and help text.
The command-line entry points turn parsed absl flags into an EasyDict with
`config_from_flags`; library code only ever sees such a config object (or explicit
arguments), never FLAGS. `default_config(**overrides)` gives the same object without any
flag parsing, for tests and for programmatic use.
"""

import easydict

# (name, kind, default, help). kind is one of: str, int, float, bool.
FLAG_TABLE = (
    # --- job ---
    ('comment', 'str', None, 'Free-form comment, logged to TensorBoard as text.'),
    ('seed', 'int', 1, 'Global seed: weights, data order and per-step randomness.'),
    ('logdir', 'str', None,
     'Output folder for TensorBoard logs, checkpoints (unless --checkpoint_dir) and the export.'),
    ('checkpoint_dir', 'str', None, 'Checkpoint folder (default: --logdir).'),
    ('load_path', 'str', None, 'Checkpoint to resume from (default: latest in checkpoint_dir).'),
    ('init_path', 'str', None, 'Checkpoint to initialise the weights from (not a resume).'),
    ('load_backbone_from', 'str', None,
     'Local weights file (.weights.h5, .keras or .h5) of the same backbone architecture; layers '
     'are matched by name and shape and a report of matched/skipped layers is logged.'),
    ('export_file', 'str', None,
     'Export the inference SavedModel here (default: <checkpoint_dir>/model) at the end.'),
    ('train', 'bool', True, 'Run training.'),
    ('data', 'str', 'demo',
     'Training data: demo (procedural, built in) or prepared (folders of nlf-tf-prepare).'),
    ('demo_pool_size', 'int', 512, 'Number of procedural demo examples per category.'),
    ('prepared_dirs', 'str', None,
     'Comma-separated output folders of nlf-tf-prepare (one dataset split each).'),
    ('dataset_weights', 'str', None,
     'Mixing weights within a category, e.g. "mads:2,coco:4" (default: each spec\'s weight).'),
    ('body_model_dir', 'str', None,
     'Folder of the body-model files (smpl/, smplh/, smplx/ as in the README) for parametric '
     'data (AGORA, BEHAVE); the trainer forwards these models to get the GT points.'),
    ('canonical_dir', 'str', None,
     'Cache of the canonical-space assets made by nlf-tf-canonical (default: '
     '<body_model_dir>/canonical_assets); missing or stale assets are generated on start.'),
    # --- augmentation (training pipeline of prepared data) ---
    ('geom_aug', 'bool', True,
     'Geometric augmentation: partial visibility, box-centre shift, zoom and roll.'),
    ('hflip_aug', 'bool', True,
     'Loader horizontal flip (prob 0.5) of kp3d/dense/kp2d examples with mirrored joint ids.'),
    ('color_aug', 'bool', True,
     'Colour augmentation: brightness, contrast, hue, saturation in random order.'),
    ('rot_aug', 'float', 20.0, 'Roll augmentation range in degrees (uniform in +-rot_aug).'),
    ('full_rot_aug_prob', 'float', 0.1, 'Probability of a roll uniform in +-180 degrees instead.'),
    ('scale_aug_up', 'float', 25.0, 'Zoom-in augmentation range in percent.'),
    ('scale_aug_down', 'float', 25.0, 'Zoom-out augmentation range in percent.'),
    ('shift_aug', 'float', 10.0,
     "Box-centre shift: a unit-disc sample times this percent of the box's long side."),
    ('partial_visibility_prob', 'float', 0.15,
     'Probability of a random partial sub-box (3D-camera, single-person datasets).'),
    ('jpeg_aug_prob', 'float', 0.25, 'Probability of JPEG re-encoding at quality 15-59.'),
    ('occlude_aug_prob', 'float', 0.5,
     'Probability of occlusion (type drawn first: objects or random erasing); objects need '
     '--occluder_dir, else that half does nothing.'),
    ('occlude_aug_scale', 'float', 1.0, 'Scale factor of object occluders.'),
    ('background_aug_prob', 'float', 0.7,
     'Probability of background replacement of param/kp3d examples with a mask (0.2 for specs '
     'with realistic_background); needs --background_dir.'),
    ('occluder_dir', 'str', None,
     'Pascal VOC 2012 root (Annotations/, JPEGImages/, SegmentationObject/) for object '
     'occluders; unset: the "objects" half of the occlusion draws does nothing.'),
    ('max_occluders', 'int', 500,
     'At most this many VOC object cut-outs are kept in memory (seeded choice of images).'),
    ('background_dir', 'str', None,
     'INRIA Holidays folder (jpg_small/, optional non_person_images.txt) for background '
     'replacement of param/kp3d examples with a person mask; unset: skipped.'),
    ('max_backgrounds', 'int', 1000,
     'At most this many background images are kept (seeded choice).'),
    ('border_value', 'int', 0, 'Fill value (0-255) outside the stored image when warping.'),
    ('training_steps', 'int', None,
     'Total optimizer steps T (learning-rate schedule, decay, gating). Required for training.'),
    ('stop_step', 'int', None, 'Stop after this many optimizer steps (default: training_steps).'),
    ('completed_steps', 'int', None, 'Override the number of completed steps when resuming.'),
    ('checkpoint_period', 'int', 2000, 'Checkpoint interval in micro-steps.'),
    ('max_checkpoints', 'int', 2, 'Number of checkpoints kept.'),
    ('log_period', 'int', 10, 'Write scalar summaries every this many optimizer steps.'),
    ('image_summary_period', 'int', 200,
     'Write an image summary of training crops every this many optimizer steps (0: never).'),
    ('validate_period', 'int', None, 'Validation every N steps (off by default).'),
    ('multi_gpu', 'bool', False, 'Deprecated name of --distribution=mirrored.'),
    ('distribution', 'str', 'none',
     'none (one device), mirrored (all GPUs of this machine, else its logical CPUs) or '
     'multi_worker (MultiWorkerMirroredStrategy from TF_CONFIG). Sub-batch sizes are global '
     'and must be divisible by replicas x --grad_accum_steps.'),
    ('tf_data_service', 'str', None,
     'Address of a tf.data service dispatcher (grpc://host:5050, see nlf-tf-data-service): the '
     'training input pipeline runs on its workers. Demo data: identical batches, in step order '
     'with one worker, any order with several. Prepared data: exactly one worker, exact order.'),
    ('jit_compile', 'bool', False, 'Compile the training step with XLA.'),
    ('steps_per_execution', 'int', 1,
     'Micro-steps per compiled call (Keras compile). Must divide --grad_accum_steps times '
     '--log_period, --image_summary_period and the progress period.'),
    ('verbose', 'int', 1,
     'Console output: 0 silent, 1 one line every max(log_period, 50) steps, 2 Keras progress bar.'),
    # --- optimizer and schedule ---
    ('weight_decay', 'float', 3e-3, 'Numerator of the decoupled weight-decay coefficient.'),
    ('decay_field', 'bool', False, 'Also apply weight decay to the localizer field.'),
    ('base_learning_rate', 'float', 2.121e-4, 'Peak learning rate b.'),
    ('lr_cooldown_fraction', 'float', 0.08, 'Share of training in the final cooldown phase.'),
    ('field_lr_factor', 'float', 1.0, 'Multiplies the warm-up and the first decay phase.'),
    ('loss_scale', 'float', 128.0, 'Fixed loss scale under float16 (0: Keras default).'),
    ('dynamic_loss_scale', 'bool', False, 'Dynamic loss scaling under float16.'),
    ('ema_momentum', 'float', 1.0, 'Exponential moving average of weights if < 1.'),
    ('grad_accum_steps', 'int', 1, 'Micro-steps (micro-batches) per optimizer update.'),
    ('force_grad_accum', 'bool', False, 'Accepted for compatibility (accumulation is always exact).'),
    ('finetune_in_inference_mode', 'int', 0, 'Last N steps with training=False.'),
    ('constrain_kernel_norm', 'float', 20.0, 'Maximum per-filter kernel norm (inf disables).'),
    ('constraint_rate', 'float', 1.0, 'MinMaxNorm rate of the kernel constraints.'),
    # --- batches ---
    ('batch_size', 'int', 32, 'kp3d sub-batch size (global, per optimizer step).'),
    ('batch_size_test', 'int', 150, 'Validation batch size.'),
    ('batch_size_parametric', 'int', 64, 'param sub-batch size.'),
    ('batch_size_densepose', 'int', 20, 'dense sub-batch size.'),
    ('batch_size_2d', 'int', 32, 'kp2d sub-batch size.'),
    ('num_points', 'int', 1024, 'Query points per example after densification.'),
    ('num_surface_points', 'int', 640, 'Surface points per parametric example.'),
    ('num_internal_points', 'int', 384, 'Interior points per parametric example.'),
    # --- geometry ---
    ('proc_side', 'int', 256, 'Side of the square training crop in pixels.'),
    ('stride_train', 'int', 32, 'Backbone stride used by FOV tests and decoding in training.'),
    ('stride_test', 'int', 32, 'Backbone stride used at test time.'),
    ('centered_stride', 'bool', True, 'Feature cell j is centred on pixel stride*j + stride/2.'),
    ('box_size_m', 'float', 2.2, 'Metric extent of the heatmap volume; sets the 2D loss scale.'),
    ('min_depth', 'float', 0.001,
     'Depth clamp of project_pose (0.001 as in the initial NLF upload; 0.1 in the later one).'),
    ('weak_perspective', 'bool', False, 'Weak-perspective solver at inference.'),
    ('mix_3d_inside_fov', 'float', 0.5, 'Weight of the 3D estimate inside the FOV at test time.'),
    ('fullpersp_l2_regul', 'float', 1e-4, 'Ridge lambda of the full-perspective solver.'),
    # --- losses ---
    ('nll_loss', 'bool', True, 'Uncertainty-weighted (NLL) loss and uncertainty gating.'),
    ('beta_nll', 'float', 1.0, 'Exponent of the stop-gradient uncertainty factor (0 disables).'),
    ('charb_eps', 'float', 0.0, 'Charbonnier epsilon in my_norm.'),
    ('fix_uncert_factor', 'bool', False, 'Uncertainty factor 1/sqrt(d) instead of sqrt(d).'),
    ('loss_factor_param', 'float', 1.0, 'Weight of the param sub-batch loss.'),
    ('loss_factor_kp', 'float', 0.75, 'Weight of the kp3d sub-batch loss.'),
    ('loss_factor_dense', 'float', 0.05, 'Weight of the dense sub-batch loss.'),
    ('loss_factor_2d', 'float', 0.1, 'Weight of the kp2d sub-batch loss.'),
    ('absloss_factor', 'float', 0.1, 'Weight of the absolute 3D loss.'),
    ('absloss_start_step', 'int', 5000, 'Absolute loss has gradient from this adjusted step on.'),
    # --- model ---
    ('backbone', 'str', 'efficientnetv2-s',
     'Backbone network (keras.applications, random init): efficientnetv2-s/m/l/b0..b3, '
     'mobilenetv3small, mobilenetv3large, resnet50, resnet101, resnet152 ("_" may stand for "-").'),
    ('depth', 'int', 8, 'Depth bins of the 2.5D heatmap.'),
    ('backbone_link_dim', 'int', 512, 'Channels of the link layer.'),
    ('field_type', 'str', 'vanilla',
     'Localizer field positional encoding: vanilla (no files) or gps (needs --field_gps_dir).'),
    ('field_gps_dir', 'str', None,
     'Folder with the GPS field assets (field_type=gps): gps_weights.npz (the encoder; convert '
     'with nlf_tf.model.field.gps_weights_from_arrays), canonical_nodes3.npy and '
     'canonical_eigval3.npy.'),
    ('finetune_gps', 'bool', True,
     'Fine-tune the pretrained GPS encoder (else frozen and gradient-stopped).'),
    ('field_posenc_dim', 'int', 1024, 'Positional-encoding features used by the field.'),
    ('field_hidden_layers', 'int', 1, 'Hidden layers of the field MLP.'),
    ('field_hidden_size', 'int', 384, 'Width of the field hidden layers.'),
    ('lbo_eigval_regul', 'float', 1e-4, 'Regulariser factor on the first field layer.'),
    ('uncert_bias', 'float', 0.0, 'Added to the uncertainty before softplus.'),
    ('uncert_bias2', 'float', 0.001, 'Added to the uncertainty after softplus.'),
    ('trainable_canonical_joints', 'bool', True, 'Learn offsets of the canonical joints.'),
    ('batch_renorm', 'bool', True,
     'Batch renormalisation in backbone and link layer (clipping ramped from step 7500).'),
    ('renorm_limit_scale', 'float', 1.0, 'Scales the ramped rmax/dmax renorm limits.'),
    ('ghost_bn', 'str', '', 'Ghost batch norm with these comma-separated split sizes.'),
    ('group_norm', 'bool', False, 'GroupNorm(32) instead of batch (re)normalisation.'),
    # --- PCA keypoint loss (lightning-pose's PCALoss) ---
    ('pca_loss', 'bool', False, 'Add the PCA keypoint-consistency loss of one dataset skeleton.'),
    ('pca_loss_name', 'str', 'pca_singleview', 'pca_singleview or pca_multiview.'),
    ('pca_dataset', 'str', 'demo', 'Data spec (data_specs/<name>.json) whose skeleton is used.'),
    ('pca_coords', 'str', '2d',
     '2d: crop pixels of the projected prediction; 3d: root-relative metres.'),
    ('pca_category', 'str', None, 'Sub-batch the term applies to (default: kp2d for 2d, kp3d '
     'for 3d); its training labels are used for the fit.'),
    ('pca_components_to_keep', 'str', '0.99',
     'An int keeps that many components; a float keeps the variance fraction.'),
    ('pca_epsilon_percentile', 'float', 99.0,
     'Percentile (0-100) of the training reprojection errors that gives epsilon.'),
    ('pca_epsilon', 'float', None, 'Fixed epsilon (overrides the percentile).'),
    ('pca_epsilon_multiplier', 'float', 1.0, 'Multiplies the empirical epsilon.'),
    ('pca_log_weight', 'float', 5.0, 'The term is weighted by 1/(2·exp(pca_log_weight)).'),
    ('pca_centering_method', 'str', None, 'Singleview centring of each pose: mean or median.'),
    ('pca_columns', 'str', None, 'Comma-separated keypoint indices for singleview PCA.'),
    ('pca_mirrored_column_matches', 'str', None,
     'Multiview matches: "0,1,2;3,4,5" (one group per view).'),
    ('pca_fit_batches', 'int', 100, 'Training micro-batches whose labels fit the PCA.'),
    ('pca_nan_policy', 'str', 'raise',
     'raise: reject degenerate fits; propagate: NaN flows as in lightning-pose.'),
    ('dtype', 'str', 'float16',
     'Compute dtype: float16 or bfloat16 (mixed policy, float32 variables) or float32.'),
)

_KINDS = {'str': str, 'int': int, 'float': float, 'bool': bool}


def default_config(**overrides):
    """Returns the defaults of every setting as an EasyDict, with `overrides` applied.

    Unknown names raise, so that a typo cannot silently fall back to a default.
    """
    cfg = easydict.EasyDict({name: default for name, _, default, _ in FLAG_TABLE})
    for name, value in overrides.items():
        if name not in cfg:
            raise KeyError(f'Unknown setting {name!r}; see nlf_tf.config.FLAG_TABLE.')
        cfg[name] = value
    return cfg


def config_from_flags(flag_values):
    """Copies the parsed values of all table flags from an absl FlagValues object."""
    return easydict.EasyDict(
        {name: getattr(flag_values, name) for name, _, _, _ in FLAG_TABLE})


def flag_kind(name):
    for n, kind, _, _ in FLAG_TABLE:
        if n == name:
            return _KINDS[kind]
    raise KeyError(name)
