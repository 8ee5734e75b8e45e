"""Throughput measurements: our compiled loop against `model.fit`, precisions, the
machine's peak matmul rate, and the input pipeline against training.

Every figure is images (or FLOPs) per second, the median of `repeats` timed windows
taken after a warmup window, so compilation and tracing are never timed. Rivals
(loop and fit, bfloat16 and float32) take turns window by window, so a background
job slows both alike. All the
measurements run in one process on one machine, so their ratios are comparable.
Used by scripts/benchmark.py and scripts/tutorial_fit.py; each function takes plain
arguments so tests can call it at tiny sizes. It lives outside the package: it times
research's loop, it is not part of it.
"""

import dataclasses
import math
import os
import resource
import statistics
import time

import research  # noqa: F401  (first: it sets TensorFlow's CPU kernels before TF loads)
import keras
import numpy as np
import tensorflow as tf

from research import data as data_lib, flops, loop, models, optim, plugins
from research.sources.datasets import synthetic
from research import steps as steps_lib
from research.state import TrainState
from research import precision as precision_lib
from research import config as config_lib
from research.config import Config

NUM_CLASSES = 10

# The fast recipe, read from its flagfile: the benchmark times what users run.
FAST_RECIPE_FLAGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                 "configs", "cifar10_fast.flags")
# What a timed window changes in the recipe: sizes, precision, and no evaluation.
_TIMED = ("batch_size", "steps_per_loop", "precision", "jit_compile", "image_size",
          "num_classes", "train_steps", "dataset", "model_dir", "eval_every", "log_every",
          "checkpoint_every", "epochs")


# The classic Keras tutorial's augmentation, as Keras preprocessing layers.
TUTORIAL_LAYERS = lambda: keras.Sequential([
    keras.layers.RandomFlip("horizontal"),
    keras.layers.RandomRotation(15 / 360),
    keras.layers.RandomTranslation(0.1, 0.1),
    keras.layers.RandomZoom(0.1)])


@dataclasses.dataclass(frozen=True)
class Settings:
  """Sizes of one benchmark run; `quick()` gives the tiny ones the test uses."""
  models: tuple = ()           # registry names (empty: all)
  batch_size: int = 256        # images per step, loop vs fit
  steps: int = 3               # steps per timed window (= steps_per_loop); 3 keeps
                               # all 8 models' 24 runs near 5 min on 2 cores
  repeats: int = 3             # timed windows; the median is reported
  precision: str = "auto"      # policy of the loop-vs-fit comparison (auto: the hardware's)
  jit_compile: bool = False
  image_size: int = 32         # pixels per side
  airbench_batch_size: int = 512  # images per step, precision and utilization
  airbench_steps: int = 2      # steps per timed window of the airbench loop
  matmul_size: int = 4096      # side of the square matmul that measures the peak
  pipeline_examples: int = 45000  # synthetic training set of the pipeline benchmark
  pipeline_steps: int = 20     # batches per timed window of the pipeline
  pipeline_augment: tuple = ()  # more --augment lists whose pipelines are timed too

  @classmethod
  def quick(cls, **overrides):
    values = dict(models=("resnet8",), batch_size=8, steps=2, repeats=2, precision="float32",
                  airbench_batch_size=8, airbench_steps=2, matmul_size=64,
                  pipeline_examples=64, pipeline_steps=2)
    values.update(overrides)
    return cls(**values)

  def model_names(self):
    return tuple(self.models) or tuple(models.MODELS.names())


def median_rate(run, work, repeats):
  """Median of `work / seconds` over `repeats` calls of `run` (after one untimed call)."""
  run()
  rates = []
  for _ in range(repeats):
    began = time.perf_counter()
    run()
    rates.append(work / (time.perf_counter() - began))
  return statistics.median(rates)


def peak_rss_mib():
  """The process's peak resident set size so far (ru_maxrss is KiB on Linux)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- loop vs fit ----------------------------------------------------------------


def make_config(settings, model, batch_size, steps, precision, **overrides):
  """A resolved config for `model` at this batch size, `steps` steps per compiled call."""
  config = Config(dataset="synthetic", model=model, batch_size=batch_size,
                  steps_per_loop=steps, precision=precision,
                  jit_compile=settings.jit_compile, image_size=settings.image_size,
                  num_classes=NUM_CLASSES, train_steps=100_000, **overrides)
  return config.validate().resolve(100_000 * batch_size, NUM_CLASSES)


def in_memory_dataset(batch_size, image_size, num_batches=4, seed=0):
  """Repeated float32 batches already in memory: neither side pays for input."""
  split, _ = synthetic(batch_size * num_batches, image_size, NUM_CLASSES, seed)
  images = split.images.astype(np.float32).reshape(
      (num_batches, batch_size) + split.images.shape[1:])
  labels = split.labels.reshape(num_batches, batch_size)
  batches = {"image": images, "label": labels,
             "target": np.eye(NUM_CLASSES, dtype=np.float32)[labels]}
  return tf.data.Dataset.from_tensor_slices(batches).repeat().prefetch(2)


def loop_window(config, dataset):
  """Builds the training state and compiled loop; returns a call timing one window (s)."""
  keras.mixed_precision.set_global_policy(config.precision)
  strategy = tf.distribute.get_strategy()
  state = TrainState(config, strategy, [str(i) for i in range(NUM_CLASSES)])
  train_loop = steps_lib.make_train_loop(
      state, steps_lib.StepSpec.from_config(config, state.model, state.rules), strategy)
  iterator = iter(dataset)
  num_steps = tf.constant(config.steps_per_loop)

  def window():
    began = time.perf_counter()
    train_loop(iterator, num_steps)
    state.step.numpy()  # Waits for the call.
    return time.perf_counter() - began

  return window


class _EpochTimer(keras.callbacks.Callback):
  """Seconds of each epoch, ended only once its metrics are read (a device sync)."""

  def __init__(self):
    super().__init__()
    self.seconds = []

  def on_epoch_begin(self, epoch, logs=None):
    self.began = time.perf_counter()

  def on_epoch_end(self, epoch, logs=None):
    [float(v) for v in (logs or {}).values()]
    self.seconds.append(time.perf_counter() - self.began)


def fit_window(config, dataset, steps_per_execution):
  """`model.fit` on the same architecture, optimizer, precision and metrics; returns a
  call timing one epoch of `steps_per_loop` steps (s). Only the epoch is timed, not
  fit's set-up around it."""
  keras.mixed_precision.set_global_policy(config.precision)
  model = models.build(config)
  # The same bookkeeping as our step, which also sums top-1 and top-5 accuracy.
  model.compile(optimizer=optim.build(config, model, optim.variable_rules(config, model)),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy", keras.metrics.SparseTopKCategoricalAccuracy(5)],
                jit_compile=config.jit_compile, steps_per_execution=steps_per_execution)
  timer = _EpochTimer()

  pairs = dataset.map(lambda batch: (batch["image"], batch["label"]))

  def window():
    model.fit(pairs, epochs=1, steps_per_epoch=config.steps_per_loop,
              callbacks=[timer], shuffle=False, verbose=0)
    return timer.seconds[-1]

  return window


def interleaved_rates(windows, work, repeats):
  """{name: median work/s} of timed windows run in turn, after one untimed call each.

  Taking turns, every side sees the same drift of the machine (other jobs, clocks).
  """
  seconds = {name: [] for name in windows}
  for window in windows.values():
    window()  # Tracing, compilation, warmup.
  for _ in range(repeats):
    for name, window in windows.items():
      seconds[name].append(window())
  return {name: work / statistics.median(s) for name, s in seconds.items()}


def loop_vs_fit(settings, model, log=print):
  """{"loop", "fit", "fit_default"} images/s of one model, and the two ratios."""
  config = make_config(settings, model, settings.batch_size, settings.steps,
                       settings.precision)
  dataset = in_memory_dataset(settings.batch_size, settings.image_size)
  windows = {"loop": loop_window(config, dataset),
             "fit": fit_window(config, dataset, settings.steps),
             "fit_default": fit_window(config, dataset, 1)}
  row = interleaved_rates(windows, settings.steps * settings.batch_size, settings.repeats)
  row["ratio"] = row["loop"] / row["fit"]
  row["default_ratio"] = row["loop"] / row["fit_default"]
  log(f"  {model}: loop {row['loop']:.0f}, fit (steps_per_execution={settings.steps}) "
      f"{row['fit']:.0f}, fit (steps_per_execution=1) {row['fit_default']:.0f} images/s")
  return row


# --- precision, peak and utilization --------------------------------------------


def airbench_config(settings, precision):
  """The fast recipe of configs/cifar10_fast.flags at the benchmark's sizes."""
  recipe = plugins.from_flagfile(FAST_RECIPE_FLAGS).to_dict()
  kept = {k: v for k, v in recipe.items() if k not in _TIMED and k not in ("model", "model_defaults")
          and k in config_lib.Config.__dataclass_fields__}
  return make_config(settings, recipe["model"], settings.airbench_batch_size,
                     settings.airbench_steps, precision, **kept)


def peak_matmul_flops(size, dtype, repeats):
  """FLOP/s of one [size, size] x [size, size] tf.linalg.matmul (2 size^3 FLOPs)."""
  a = tf.random.normal([size, size], dtype=tf.float32)
  a, b = tf.cast(a, dtype), tf.cast(tf.transpose(a), dtype)

  def run():
    c = tf.linalg.matmul(a, b)
    c[0, 0].numpy()  # Waits for the product.

  return median_rate(run, 2 * size ** 3, repeats)


def training_flops_per_image(config):
  """Forward + backward FLOPs of one image: the backward pass costs about 2 forwards."""
  keras.mixed_precision.set_global_policy(config.precision)
  return 3 * flops.count_flops(models.build(config))


# --- input pipeline -------------------------------------------------------------


def pipeline_rate(split, config, steps, repeats, extra=None):
  """Images/s of research.data.train_dataset alone, optionally mapped through `extra`."""
  dataset = data_lib.train_dataset(split, config, 0, None)
  if extra is not None:
    dataset = dataset.map(extra, num_parallel_calls=tf.data.AUTOTUNE)
  iterator = iter(dataset)

  def window():
    for _ in range(steps):
      next(iterator)

  return median_rate(window, steps * config.batch_size, repeats)


def pipeline_rates(settings, log=print):
  """Images/s of our fast-recipe, crop+flip and `tutorial` pipelines, the Keras tutorial's
  preprocessing layers mapped over the same (unaugmented) batches, and the pipelines of
  `settings.pipeline_augment`."""
  split, _ = synthetic(settings.pipeline_examples, settings.image_size,
                                NUM_CLASSES)
  keras.mixed_precision.set_global_policy("float32")
  base = airbench_config(settings, "float32")
  layers = TUTORIAL_LAYERS()

  @tf.autograph.experimental.do_not_convert  # Keras layers need no autograph.
  def keras_augment(batch):
    return {**batch, "image": layers(batch["image"], training=True)}

  cases = {"crop,alternating_flip": (base, None),
           "crop,flip": (base.replace(augment="crop,flip"), None),
           "tutorial (ours)": (base.replace(augment="tutorial"), None),
           "tutorial (keras layers)": (base.replace(augment=""), keras_augment),
           **{augment: (base.replace(augment=augment), None)
              for augment in settings.pipeline_augment}}
  rates = {}
  for name, (config, extra) in cases.items():
    rates[name] = pipeline_rate(split, config, settings.pipeline_steps, settings.repeats,
                                extra)
    log(f"  pipeline {name}: {rates[name]:.0f} images/s")
  return rates


# --- op determinism -------------------------------------------------------------


def determinism_cost(settings, dataset, log=print):
  """Images/s of airbench training and of the input pipeline with TensorFlow op
  determinism off and on (process-wide, so toggled around each window)."""
  config = airbench_config(settings, settings.precision)
  # One training state per mode: each traces its step under its own setting (the input-wait
  # timestamps exist only without determinism).

  def toggled(enabled, window):
    def run():
      loop._set_op_determinism(enabled)  # pylint: disable=protected-access
      return window()
    return run

  rates = interleaved_rates({"off": toggled(False, loop_window(config, dataset)),
                             "on": toggled(True, loop_window(config, dataset))},
                            settings.airbench_steps * settings.airbench_batch_size,
                            settings.repeats)
  split, _ = synthetic(settings.pipeline_examples, settings.image_size,
                                NUM_CLASSES)
  for enabled in (False, True):
    loop._set_op_determinism(enabled)  # pylint: disable=protected-access
    rates[f"pipeline {'on' if enabled else 'off'}"] = pipeline_rate(
        split, config, settings.pipeline_steps, settings.repeats)
  loop._set_op_determinism(False)  # pylint: disable=protected-access
  log("  determinism off/on: training {off:.0f}/{on:.0f}, pipeline {pipeline off:.0f}/"
      "{pipeline on:.0f} images/s".format(**rates))
  return rates


# --- everything -----------------------------------------------------------------


def run(settings, log=print):
  """Runs every measurement; returns (table rows, summary dict of the headline ratios)."""
  plugins.load()
  rows, summary = [], {}
  auto = precision_lib.resolve("auto")
  features = precision_lib.native_bf16_flags()
  rows.append(("CPU native bf16 flags; --precision=auto picks; oneDNN kernels",
               f"{', '.join(features) or 'none'}; {auto}; "
               f"{'on' if precision_lib.onednn_enabled() else 'off'}"))
  summary["auto_precision"] = auto
  summary["onednn"] = precision_lib.onednn_enabled()
  if settings.precision == "auto":
    settings = dataclasses.replace(settings, precision=auto)
  log(f"loop vs fit: batch {settings.batch_size}, {settings.steps} steps a window, "
      f"{settings.repeats} windows, {settings.precision}, jit_compile={settings.jit_compile}")
  per_model = {}
  for name in settings.model_names():
    per_model[name] = row = loop_vs_fit(settings, name, log)
    rows.append((f"{name}: loop / fit / fit(spe=1) images/s",
                 f"{row['loop']:.0f} / {row['fit']:.0f} / {row['fit_default']:.0f} "
                 f"(x{row['ratio']:.2f}, x{row['default_ratio']:.2f})"))
  rows.append(("peak RSS MiB after loop vs fit", f"{peak_rss_mib():.0f}"))
  summary["fit_ratio"] = min(r["ratio"] for r in per_model.values())
  summary["fit_default_ratio"] = min(r["default_ratio"] for r in per_model.values())

  log(f"airbench (fast recipe), batch {settings.airbench_batch_size}")
  dataset = in_memory_dataset(settings.airbench_batch_size, settings.image_size)
  precisions = ("mixed_bfloat16", "float32")
  rate = interleaved_rates(
      {p: loop_window(airbench_config(settings, p), dataset) for p in precisions},
      settings.airbench_steps * settings.airbench_batch_size, settings.repeats)
  log(f"  airbench mixed_bfloat16 {rate['mixed_bfloat16']:.0f}, "
      f"float32 {rate['float32']:.0f} images/s")
  peak = {}
  flops_per_image = training_flops_per_image(airbench_config(settings, "float32"))
  for dtype in (tf.bfloat16, tf.float32):
    peak[dtype.name] = peak_matmul_flops(settings.matmul_size, dtype, settings.repeats)
    log(f"  peak matmul {dtype.name} ({settings.matmul_size}^2): "
        f"{peak[dtype.name] / 1e9:.1f} GFLOP/s")
  summary["bf16_speedup"] = rate["mixed_bfloat16"] / rate["float32"]
  # What `auto` gains over the precision it did not pick (on a CPU it picks one of these).
  other = "float32" if auto == "mixed_bfloat16" else "mixed_bfloat16"
  summary["auto_speedup"] = rate.get(auto, rate["float32"]) / rate[other]
  summary["utilization_bf16"] = flops_per_image * rate["mixed_bfloat16"] / peak["bfloat16"]
  summary["utilization_fp32"] = flops_per_image * rate["float32"] / peak["float32"]
  rows += [("airbench mixed_bfloat16 / float32 images/s",
            f"{rate['mixed_bfloat16']:.0f} / {rate['float32']:.0f}"),
           ("airbench training GFLOPs per image (3 x forward)", f"{flops_per_image / 1e9:.3f}"),
           ("peak matmul bfloat16 / float32 GFLOP/s",
            f"{peak['bfloat16'] / 1e9:.1f} / {peak['float32'] / 1e9:.1f}"),
           ("peak RSS MiB after airbench", f"{peak_rss_mib():.0f}")]

  log(f"input pipeline: {settings.pipeline_examples} synthetic images, "
      f"batch {settings.airbench_batch_size}")
  pipes = pipeline_rates(settings, log)
  training = max(rate.values())  # The faster precision: the harder one to keep up with.
  summary["pipeline_ratio"] = pipes["crop,alternating_flip"] / training
  summary["pipeline_vs_tutorial"] = (pipes["crop,alternating_flip"]
                                     / pipes["tutorial (keras layers)"])
  rows += [(f"pipeline {name} images/s", f"{value:.0f}") for name, value in pipes.items()]
  rows += [(f"pipeline {augment} / airbench training images/s",
            f"{pipes[augment] / training:.1f}") for augment in settings.pipeline_augment]

  log("op determinism (--deterministic): off vs on")
  det = determinism_cost(settings, dataset, log)
  summary["determinism_train_ratio"] = det["on"] / det["off"]
  summary["determinism_pipeline_ratio"] = det["pipeline on"] / det["pipeline off"]
  rows += [("airbench training images/s, determinism off / on",
            f"{det['off']:.0f} / {det['on']:.0f}"),
           ("input pipeline images/s, determinism off / on",
            f"{det['pipeline off']:.0f} / {det['pipeline on']:.0f}")]
  rows.append(("peak RSS MiB (whole run)", f"{peak_rss_mib():.0f}"))
  summary["peak_rss_mib"] = peak_rss_mib()
  summary["per_model"] = {name: {k: round(v, 3) for k, v in row.items()}
                          for name, row in per_model.items()}
  return rows, summary


def format_table(rows, summary):
  """A markdown table of the measurements, then the headline ratios."""
  lines = ["| measurement | value |", "| --- | ---: |"]
  lines += [f"| {name} | {value} |" for name, value in rows]
  lines += [f"| **{key}** | {value:.3f} |" for key, value in summary.items()
            if isinstance(value, float) and key != "peak_rss_mib"]
  return "\n".join(lines)


def is_finite_positive(value):
  return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


# --- time to accuracy, the tutorial's way -----------------------------------------


class _TimeToAccuracy(keras.callbacks.Callback):
  """Per epoch: wall seconds since training began and validation accuracy; the first
  second each target accuracy was reached."""

  def __init__(self, targets, log):
    super().__init__()
    self.targets, self.log = sorted(targets), log
    self.epochs, self.reached = [], {}

  def on_train_begin(self, logs=None):
    self.began = time.perf_counter()

  def on_epoch_end(self, epoch, logs=None):
    seconds, accuracy = time.perf_counter() - self.began, float(logs["val_accuracy"])
    self.epochs.append({"epoch": epoch + 1, "seconds": round(seconds, 1),
                        "val_accuracy": round(accuracy, 4)})
    for target in self.targets:
      if accuracy >= target and target not in self.reached:
        self.reached[target] = {"epoch": epoch + 1, "seconds": round(seconds, 1)}
    self.log(f"  epoch {epoch + 1}: {seconds:.0f} s, val_accuracy {accuracy:.4f}")


def tutorial_fit(train, val, epochs, batch_size=64, learning_rate=1e-3,
                 precision="mixed_bfloat16", targets=(0.8, 0.85), log=print):
  """The classic tutorial's improved CNN trained the tutorial's way: `model.fit` with
  Keras preprocessing-layer augmentation (TUTORIAL_LAYERS, in the input pipeline as
  the tutorial's ImageDataGenerator was), plain momentum SGD at a constant rate,
  validation every epoch. `train`, `val`: research.sources.memory.Arrays. Returns the
  time-to-accuracy record: {"epochs": [...], "reached": {target: {"epoch", "seconds"}}, ...}."""
  keras.mixed_precision.set_global_policy(precision)
  model = models.MODELS.get("improved_cnn")(NUM_CLASSES, train.images.shape[1])
  model.compile(optimizer=keras.optimizers.SGD(learning_rate, momentum=0.9),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"])
  augment = TUTORIAL_LAYERS()

  @tf.autograph.experimental.do_not_convert  # Keras layers need no autograph.
  def augmented(images, labels):
    return augment(tf.cast(images, tf.float32), training=True), labels

  train_ds = (tf.data.Dataset.from_tensor_slices((train.images, train.labels))
              .shuffle(len(train), reshuffle_each_iteration=True).batch(batch_size)
              .map(augmented, num_parallel_calls=tf.data.AUTOTUNE)
              .prefetch(tf.data.AUTOTUNE))
  val_ds = tf.data.Dataset.from_tensor_slices((val.images, val.labels)).batch(500)
  timer = _TimeToAccuracy(targets, log)
  model.fit(train_ds, epochs=epochs, validation_data=val_ds, callbacks=[timer],
            shuffle=False, verbose=0)  # train_ds shuffles itself.
  return {"epochs": timer.epochs,
          "reached": {str(t): timer.reached.get(t) for t in timer.targets},
          "final_val_accuracy": timer.epochs[-1]["val_accuracy"],
          "seconds": timer.epochs[-1]["seconds"], "peak_rss_mib": round(peak_rss_mib())}
