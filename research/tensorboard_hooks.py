"""TensorBoard extras as hooks: inputs, predictions, histograms, HParams, profile, summary.

Each is a registered hook, chosen with `--hooks` (docs/TENSORBOARD.md lists them, with
their costs), e.g. `--hooks="histograms(every=500),predictions"`. They run in Python
between compiled calls and only read the model: the gradient histograms put back any
state the extra forward pass changes.
"""

import os
import subprocess

from absl import logging
import keras
import numpy as np
import tensorflow as tf
from tensorboard.plugins.hparams import api as hp

from research import data as data_lib, flops, plots, predict, summaries
from research.hooks import HOOKS, Hook

GRID_IMAGES, GRID_COLS = 16, 4   # augmented training inputs per grid
GRID_CELL = 64                   # pixels: small inputs are scaled up to about this
PREDICTION_GRID = 25             # images in the tutorial's 5x5 prediction grid
MISTAKES = 16                    # most confidently wrong examples shown


# --- train_images -------------------------------------------------------------


def train_batch(ctx):
  """The augmented global batch dict of step `ctx.step` as the step sees it."""
  dataset = data_lib.train_dataset(ctx.data.train, ctx.config, ctx.step, None,
                                   seed=ctx.data_seed, stop_step=ctx.step + 1)
  return next(iter(dataset))


@HOOKS.register("train_images")
def train_images(config, every=1000):
  """At start and every `every` steps: a grid of augmented training inputs."""
  del config
  def write(ctx):
    images = train_batch(ctx)["image"]
    scale = max(1, GRID_CELL // images.shape[1])
    grid = plots.image_grid(images[:GRID_IMAGES].numpy(), GRID_COLS, scale=scale)
    with ctx.writers.train.as_default(step=ctx.step):
      tf.summary.image("train_images", grid[None])
  return Hook(chief_only=True, every=_positive("train_images", "every", every),
              on_step=write, at_start=write)


# --- predictions --------------------------------------------------------------


def prediction_figures(model, split, class_names, count=0, tta="none", matrix=None,
                       compiled=None, batch_size=250):
  """{name: Figure}: prediction grid, confusion matrix, confident mistakes of `count`
  examples of `split` (0: all) spread over its classes, predicted `batch_size` at a time
  with TTA `tta` (through `compiled`, a predict.compiled_probabilities, if given).
  `matrix`, when given, is the confusion matrix of the whole split (an evaluation's),
  drawn instead."""
  part = split.sample(count or len(split))
  images, labels = part.head(len(part)), part.labels
  probs = predict.probabilities(model, images, tta, batch_size=batch_size, compiled=compiled)
  guesses = probs.argmax(-1)
  wrong = np.flatnonzero(guesses != labels)
  worst = wrong[np.argsort(-probs[wrong, guesses[wrong]], kind="stable")][:MISTAKES]
  if matrix is None:
    matrix = plots.confusion_matrix(labels, guesses, len(class_names))
  n = PREDICTION_GRID
  shown = images.astype(np.float32)
  return {
      "predictions": plots.prediction_grid(shown[:n], labels[:n], probs[:n], class_names),
      "confusion_matrix": plots.confusion_figure(matrix, class_names),
      "confident_mistakes": plots.prediction_grid(
          shown[worst], labels[worst], probs[worst], class_names, cols=4,
          title=f"most confident of {len(wrong)} mistakes in {len(labels)} examples"),
  }


def write_figures(writer, step, figures):
  """Each Figure as a PNG image summary named by its key."""
  with writer.as_default(step=step):
    for name, figure in figures.items():
      tf.summary.image(name, tf.image.decode_png(plots.to_png(figure), channels=3)[None])


@HOOKS.register("predictions")
def predictions(config, examples=250):
  """After each evaluation: its confusion matrix (every example, counted by the
  evaluation itself), and a prediction grid and the most confidently wrong of the first
  `examples` eval examples, with the weights and TTA evaluated."""
  del config
  if examples < 1:
    raise ValueError(f"predictions: examples must be >= 1, got {examples}")

  compiled = {}  # One traced prediction function per TTA the evaluations use.

  def write(ctx):
    tta = ctx.eval_tta  # As evaluated: with --tta_final_only, none until the end.
    if tta not in compiled:
      compiled[tta] = predict.compiled_probabilities(ctx.state.model, tta)
    with ctx.state.averaged_weights():
      figures = prediction_figures(ctx.state.model, ctx.data.eval, ctx.data.class_names,
                                   examples, tta,
                                   matrix=ctx.eval_metrics["confusion_matrix"],
                                   compiled=compiled[tta],
                                   # No more activations at once than an evaluation's.
                                   batch_size=ctx.config.global_eval_batch_size)
    write_figures(ctx.writers.eval, ctx.step, figures)
  return Hook(chief_only=True, after_eval=write, eval_metrics=("confusion_matrix",))


# --- histograms ---------------------------------------------------------------


@HOOKS.register("histograms")
def histograms(config, every=1000):
  """At start and every `every` steps: each layer's weights, and its gradients on the
  step's batch as the training step computes them (its step kind, scaling, all-reduce)."""
  del config
  def write(ctx):
    variables = ctx.state.model.trainable_variables
    # Every worker takes part (the gradients are all-reduced); the chief writes.
    grads = ctx.runner.gradients(train_batch(ctx))
    if not ctx.chief:
      return
    with ctx.writers.train.as_default(step=ctx.step):
      tf.summary.scalar("gradient_norm", tf.linalg.global_norm(
          [g for g in grads if g is not None]))
      for variable, grad in zip(variables, grads):
        tf.summary.histogram(f"weights/{variable.path}", variable)
        if grad is not None:
          tf.summary.histogram(f"gradients/{variable.path}", grad)
  return Hook(every=_positive("histograms", "every", every), on_step=write, at_start=write)


# --- hparams ------------------------------------------------------------------


def final_metrics(ctx):
  """The `final/...` scalars the HParams dashboard shows for this run: every metric of
  the last evaluation and the last training log."""
  values = {}
  for prefix, metrics in (("eval", ctx.eval_metrics), ("train", ctx.train_metrics)):
    for name, value in summaries.scalar_items(metrics or {}):
      values[f"final/{prefix}_{name}"] = value
  return values


@HOOKS.register("hparams")
def hparams(config):
  """The run's config on the HParams dashboard, and its final metrics at the end.

  Both go to the train writer: the dashboard takes a session's metrics from the
  scalars of its own run (RUN/train), so `final/eval_accuracy` is found there.
  """
  del config
  def start(ctx):
    with ctx.writers.train.as_default(step=ctx.step):
      hp.hparams(ctx.config.hparams(), trial_id=os.path.basename(ctx.config.model_dir))

  def end(ctx):
    ctx.writers.scalars(ctx.writers.train, ctx.step, final_metrics(ctx))
  return Hook(chief_only=True, at_start=start, at_end=end)


# --- profile ------------------------------------------------------------------


@HOOKS.register("profile")
def profile(config, start=10, stop=20):
  """Traces steps start+1..stop into RUN/train/plugins/profile.

  The trace (.xplane.pb) is written by TensorFlow itself; viewing it needs the
  optional tensorboard-plugin-profile package.
  """
  del config
  if not 0 <= start < stop:
    raise ValueError(f"profile: needs 0 <= start < stop, got start={start}, stop={stop}")
  running = []  # [True] while a trace is open: a resumed run may start past `start`.

  def toggle(ctx):
    if ctx.step == start and not running:
      tf.profiler.experimental.start(os.path.join(ctx.config.model_dir, "train"))
      running.append(True)
    elif ctx.step >= stop and running:
      end(ctx)

  def end(ctx):
    if running:
      tf.profiler.experimental.stop()
      running.clear()
      logging.info("profile of steps %d-%d written under %s", start + 1, ctx.step,
                   os.path.join(ctx.config.model_dir, "train", "plugins", "profile"))
  return Hook(chief_only=True, at_steps=tuple(s for s in (start, stop) if s > 0),
              on_step=toggle, at_start=toggle, at_end=end)


def _positive(hook, name, value):
  if value < 1:
    raise ValueError(f"{hook}: {name} must be >= 1, got {value}")
  return value


# --- model_summary ------------------------------------------------------------


def git_commit():
  """The repository's HEAD commit, `+dirty` with uncommitted changes; None outside git."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                          text=True, timeout=10, check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                           cwd=root, capture_output=True, text=True, timeout=10).stdout
  except (OSError, subprocess.SubprocessError):
    return None
  return head + ("+dirty" if dirty.strip() else "")


def model_text(model, config):
  """Markdown: layer table, parameters, FLOPs per image, versions, commit and config."""
  lines = []
  model.summary(print_fn=lambda line, **_: lines.append(line), line_length=100)
  return "\n\n".join([
      f"**{model.name}**: {model.count_params():,} parameters, "
      f"{flops.count_flops(model) / 1e6:,.1f} MFLOPs per image "
      f"({config.image_size}x{config.image_size})",
      f"tensorflow {tf.__version__}, keras {keras.__version__}, numpy {np.__version__}; "
      f"commit {git_commit() or 'unknown'}",
      "```\n" + "\n".join(lines) + "\n```",
      "```\n" + config.to_json() + "\n```",
  ])


def write_graph(model, config, writer):
  """The inference forward pass as a graph on the Graphs dashboard."""
  spec = tf.TensorSpec([None, config.image_size, config.image_size, 3], tf.float32)
  forward = tf.function(lambda images: model(images, training=False))
  with writer.as_default():
    tf.summary.graph(forward.get_concrete_function(spec).graph)


@HOOKS.register("model_summary")
def model_summary(config):
  """At start: the model's layers, size, FLOPs, versions, commit and config as text;
  the graph at a fresh start only (a resume's would be a second one of the same model,
  which TensorBoard warns about)."""
  del config
  def write(ctx):
    ctx.writers.text("model_summary", model_text(ctx.state.model, ctx.config), ctx.step)
    if ctx.step == 0:
      write_graph(ctx.state.model, ctx.config, ctx.writers.train)
  return Hook(chief_only=True, at_start=write)
