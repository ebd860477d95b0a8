"""Default recipe: the `mnist` AlexNet at half width with batch norm, 13 epochs with a moving average of its
weights, each choice made on validation (docs/recipe.md). Its accuracy and training time per CPU:
docs/results/cost.md. The full-width network: configs/full_width.py.

Every other config starts from this one and overrides a few fields. Any field can also be set on the
command line: `--config.learning_rate=0.05`, `--config.model.normalization=lrn`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  # Model: see alexnet_jax/model/alexnet.py for what each knob switches.
  config.model = ml_collections.ConfigDict()
  config.model.variant = "mnist"  # mnist | original
  config.model.num_classes = 10
  config.model.activation = "relu"  # relu | tanh
  config.model.pooling = "overlapping"  # overlapping (3x3/2) | non_overlapping (2x2/2)
  # Chosen on validation (docs/recipe.md): batch norm converges sooner, which the 10 epochs below turn into
  # accuracy.
  config.model.normalization = "batchnorm"  # none | lrn | batchnorm
  # folded | flax: the same function and statistics; folded normalises in one pass over the map instead of
  # two, a shorter CPU step (docs/performance.md). The recipe sweep's earlier runs used flax
  # (docs/results/recipe.md says which).
  config.model.batch_norm_impl = "folded"
  config.model.dropout_rate = 0.5
  # Chosen on validation by the cost sweep (experiments/sweeps/cost.py, docs/recipe.md#the-width): half the
  # channels of every convolution, a quarter of the arithmetic, as accurate as the full width.
  config.model.width_multiplier = 0.5
  config.model.dense_width = 0  # 0: the variant's own (1024 for mnist, 4096 for original)
  # Compute dtype: auto | float32 | bfloat16 (parameters and optimizer state stay float32 either way).
  # auto: bfloat16 with oneDNN's convolutions on a CPU with native bfloat16 (as accurate, and faster:
  # docs/results/performance.md), float32 elsewhere.
  config.model.dtype = "auto"
  # Convolutions: auto (oneDNN on a CPU where its extension builds, else XLA) | xla | onednn.
  config.model.conv_impl = "auto"

  # Data: TFDS `mnist`. Offline, point `manual_dir` at the four original .gz files.
  config.data = ml_collections.ConfigDict()
  config.data.data_dir = ""  # "": TFDS's default ($TFDS_DATA_DIR or ~/tensorflow_datasets)
  config.data.manual_dir = ""  # "": TFDS's default (<data_dir>/downloads/manual)
  config.data.validation_size = 5000  # held out from the end of the train split
  # Training shards, each with its own order; 0: one per process (see input_pipeline.DataLayout).
  config.data.num_shards = 0
  config.data.augment = True
  config.data.max_translate = 2.0  # pixels
  config.data.max_rotate = 10.0  # degrees
  config.data.max_scale = 0.1  # relative: scale drawn from [1 - s, 1 + s]
  # Elastic distortion (Simard et al. 2003) after the affine map: displacement alpha x Gaussian(sigma)-
  # smoothed uniform noise, in pixels. 0: off.
  config.data.elastic_alpha = 0.0
  config.data.elastic_sigma = 4.0
  # Stroke width: each image moved a fraction drawn from [-max_stroke, max_stroke] (at most 1) of the way
  # to its 3x3 grey erosion (-) or dilation (+). 0: off.
  config.data.max_stroke = 0.0
  # Gaussian blur of a width drawn per image from [0, max_blur_sigma] pixels, last. 0: off.
  config.data.max_blur_sigma = 0.0

  # Optimisation.
  config.batch_size = 128  # global, over all devices
  config.eval_batch_size = 1000
  # The most a 2-core CPU with AVX2 only trains at half width in 30 minutes (docs/recipe.md#the-width;
  # timings: docs/results/cost.md). At full width validation accuracy rose up to 10 epochs and not past them
  # (configs/best.py).
  config.num_epochs = 13.0  # fractional epochs are fine: steps = round(num_epochs * steps per epoch)
  config.num_train_steps = -1  # -1: num_epochs * steps per epoch
  config.optimizer = "adamw"  # sgd | adamw
  config.learning_rate = 2e-3  # peak
  config.schedule = "onecycle"  # constant | warmup_cosine | step | onecycle
  config.warmup_steps = 200  # warmup_cosine only
  config.step_decay_every_steps = 1000  # step only
  config.step_decay_factor = 0.1  # step only
  config.onecycle_pct_start = 0.25  # onecycle only: fraction of steps spent rising
  config.momentum = 0.9  # sgd
  config.nesterov = True  # sgd
  config.weight_decay = 0.05  # decoupled (times the learning rate) for adamw; L2 for sgd (the paper: 5e-4)
  config.label_smoothing = 0.1
  config.grad_clip_norm = 0.0  # 0: no clipping
  # Polyak averaging: > 0 keeps a moving average of the weights (decay per step) beside them, and the
  # average is the run's model (evaluated, checkpointed, used by evaluate/predict/export); 0: off.
  config.ema_decay = 0.999

  # Loop, evaluation, checkpoints, logging.
  config.parallelism = "jit"  # jit: one step over a Mesh of every device | pmap: the classic form
  # Training steps per compiled call (> 1: a lax.scan, one process, jit only). Pays on GPUs at small batch,
  # where the host's dispatch bounds the loop (docs/results/performance.md); on CPUs XLA runs a scanned step
  # far slower: keep 1 there.
  config.steps_per_dispatch = 1
  config.eval_every_steps = -1  # -1: once per epoch
  config.eval_test_during_training = False  # the test split is evaluated at the end in any case
  # With ema_decay > 0: also evaluate the raw weights at every evaluation, not only at the end (where they
  # always are). Off, each epoch's validation costs half as much (docs/results/performance.md).
  config.eval_raw_during_training = False
  config.checkpoint_every_steps = 500
  config.keep_latest_checkpoints = 2  # >= 2 so that a corrupt latest has a fallback
  config.log_every_steps = 50
  return config
