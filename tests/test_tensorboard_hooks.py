import glob
import io
import os
import shutil

import keras
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
from tensorboard.plugins.hparams import metadata as hparams_metadata

from tests.conftest import tiny_config  # the module pytest loaded as conftest
from research import data, distribute, events, hooks, loop, plots, predict
from research import tensorboard_hooks
from tests.conftest import make_runner
from research.config import ConfigError
from research.sources.memory import Arrays

ALL = ("train_images(every=3),predictions,histograms(every=3),hparams,"
       "profile(start=2, stop=4),model_summary")


COMPILED = []  # The prediction functions that hooks compiled during `run`.


def _kept(compile_fn):
  def compiled(*args):
    COMPILED.append(compile_fn(*args))
    return COMPILED[-1]
  return compiled


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """One 6-step run with every extra: evals at 3 and 6, images/histograms at 0, 3, 6."""
  config = tiny_config(tmp_path_factory.mktemp("all"), hooks=ALL, eval_every=3)
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(predict, "compiled_probabilities", _kept(predict.compiled_probabilities))
    result = loop.train(config)
  return (config, result, events.accumulator(os.path.join(config.model_dir, "train")),
          events.accumulator(os.path.join(config.model_dir, "eval")))


def _images(acc, tag):
  """{step: uint8 image} of an image summary (TF2 stores [width, height, png])."""
  out = {}
  for event in acc.Tensors(tag):
    width, height, png = tf.make_ndarray(event.tensor_proto)
    image = np.array(Image.open(io.BytesIO(png)))
    assert image.shape[:2] == (int(height), int(width))
    out[event.step] = image
  return out


def test_train_images_show_the_augmented_batch_of_each_step(run):
  config, _, train, _ = run
  grids = _images(train, "train_images")
  assert sorted(grids) == [0, 3, 6]
  cell = 16 * 4  # 16px inputs are scaled up to 64px cells; 4x4 cells, 2px gaps
  assert grids[0].shape == (4 * cell + 6, 4 * cell + 6, 3)
  split = data.load(config).train
  resolved = config.replace(train_steps=4, steps_per_epoch=len(split) // config.batch_size)
  images = next(iter(data.train_dataset(split, resolved, 3, None)))["image"]
  first = np.round(images[0].numpy()).astype(np.uint8).repeat(4, 0).repeat(4, 1)
  np.testing.assert_array_equal(grids[3][:cell, :cell], first)
  assert not np.array_equal(grids[0][:cell, :cell], grids[3][:cell, :cell])


def test_prediction_figures_follow_each_evaluation(run):
  _, _, _, evals = run
  sizes = {"predictions": (1100, 1000), "confusion_matrix": (700, 800)}
  for tag in ("predictions", "confusion_matrix", "confident_mistakes"):
    images = _images(evals, tag)
    assert sorted(images) == [3, 6]
    if tag in sizes:
      assert images[6].shape[:2] == sizes[tag]
    assert images[6].std() > 10  # drawn, not blank


def test_prediction_figures_trace_once_for_every_evaluation(run):
  [compiled] = COMPILED  # One function for both evaluations, not one each...
  assert compiled.experimental_get_tracing_count() == 1  # ...and traced once.


def test_confusion_matrix_counts():
  matrix = plots.confusion_matrix([0, 1, 1, 2], [0, 0, 1, 2], 3)
  np.testing.assert_array_equal(matrix, [[1, 0, 0], [1, 1, 0], [0, 0, 1]])


def test_confident_mistakes_are_the_most_confident_wrong_guesses(monkeypatch):
  split = Arrays(np.zeros((4, 8, 8, 3), np.uint8), np.array([0, 0, 1, 1], np.int32))
  probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.1, 0.9]], np.float32)
  monkeypatch.setattr(predict, "probabilities", lambda model, images, tta, **kw: probs)
  drawn = []
  monkeypatch.setattr(plots, "prediction_grid",
                      lambda images, labels, p, names, **kw: drawn.append((labels, p)))
  monkeypatch.setattr(plots, "confusion_figure", lambda matrix, names: matrix)
  figures = tensorboard_hooks.prediction_figures(None, split, ["a", "b"])
  np.testing.assert_array_equal(figures["confusion_matrix"], [[1, 1], [1, 1]])
  mistakes_labels, mistakes_probs = drawn[-1]
  np.testing.assert_array_equal(mistakes_labels, [0, 1])  # 0.8 first, then 0.6
  np.testing.assert_array_equal(mistakes_probs, probs[[1, 2]])


def test_histograms_of_every_weight_and_gradient(run):
  config, _, train, _ = run
  histograms = train.PluginTagToContent("histograms")
  weights = [t for t in histograms if t.startswith("weights/")]
  grads = [t for t in histograms if t.startswith("gradients/")]
  model_vars = tf.keras.models.load_model(os.path.join(config.model_dir, "model.keras"))
  assert len(weights) == len(grads) == len(model_vars.trainable_variables)
  for tag in weights[:3] + grads[:3]:
    assert [e.step for e in train.Tensors(tag)] == [0, 3, 6]
  last = tf.make_ndarray(train.Tensors(grads[0])[-1].tensor_proto)  # [bins, (left, right, count)]
  assert last[:, 2].sum() > 0 and np.abs(last[:, :2]).max() > 0
  norms = [float(tf.make_ndarray(e.tensor_proto)) for e in train.Tensors("gradient_norm")]
  assert len(norms) == 3 and all(n > 0 and np.isfinite(n) for n in norms)


@pytest.mark.parametrize("strategy, precision", [
    ("default", "float32"), ("mirrored", "float32"),
    ("default", "mixed_float16"),  # Gradients of the loss, not of the loss times its scale.
])
def test_histogram_gradients_are_the_steps_own(strategy, precision, make_config):
  # Plain SGD at lr 1: the step's update is exactly minus the gradient it applied,
  # with a batchnorm lr_scale rule and global-batch scaling; BatchNorm statistics are put back.
  config = make_config(optimizer="sgd", momentum=0.0, nesterov=False, weight_decay=0.0,
                       learning_rate=1.0, param_rules="batchnorm(lr_scale=4.0)",
                       augment="crop,mixup", precision=precision)
  split = data.load(config)
  config = config.resolve(len(split.train), len(split.class_names))
  keras.mixed_precision.set_global_policy(precision)
  try:
    state, runner = make_runner(config, distribute.make_strategy(strategy))
  finally:
    keras.mixed_precision.set_global_policy("float32")
  batch = next(iter(data.train_dataset(split.train, config, 0, None)))
  before = [v.numpy() for v in state.model.variables]
  grads = runner.gradients(batch)
  for old, new in zip(before, state.model.variables):
    np.testing.assert_array_equal(old, new.numpy())
  batches = iter(runner.strategy.distribute_datasets_from_function(
      lambda ctx: data.train_dataset(split.train, config, 0, ctx)))
  weights = [v.numpy() for v in state.model.trainable_variables]
  runner.train_loop(batches, tf.constant(1))
  for w, v, g in zip(weights, state.model.trainable_variables, grads):
    np.testing.assert_allclose(w - v.numpy(), g.numpy(), rtol=1e-4, atol=1e-6)


def test_confusion_matrix_agrees_with_the_logged_evaluation(make_config, monkeypatch):
  # Lookahead weights and flip TTA, figures of the first 10 examples: the matrix is
  # still the whole evaluation's, counted by the evaluation that logged the accuracy.
  matrices = []
  figure = plots.confusion_figure
  monkeypatch.setattr(plots, "confusion_figure",
                      lambda matrix, names: matrices.append(matrix) or figure(matrix, names))
  result = loop.train(make_config(hooks="predictions(examples=10)", lookahead_every=2,
                                  tta="flip", train_steps=6, eval_every=6))
  matrix = matrices[-1]
  assert matrix.shape == (10, 10) and matrix.sum() == result.final_eval["examples"] == 66
  assert np.trace(matrix) / matrix.sum() == pytest.approx(result.final_eval["accuracy"])
  np.testing.assert_array_equal(matrix, result.final_eval["confusion_matrix"])


def test_prediction_figures_use_the_tta_the_evaluation_used(make_config, monkeypatch):
  """--tta_final_only: the figures of the per-epoch evaluations see one view, as the
  evaluations and their confusion matrix do; the final one sees the run's --tta."""
  used, figures = [], tensorboard_hooks.prediction_figures
  monkeypatch.setattr(tensorboard_hooks, "prediction_figures",
                      lambda *args, **kwargs: used.append(args[4]) or figures(*args, **kwargs))
  loop.train(make_config(hooks="predictions(examples=10)", tta="flip", tta_final_only=True,
                         train_steps=4, eval_every=2))
  assert used == ["none", "flip"]


def test_hparams_and_final_metrics(run):
  config, result, train, _ = run
  content = train.PluginTagToContent("hparams")[hparams_metadata.SESSION_START_INFO_TAG]
  info = hparams_metadata.parse_session_start_info_plugin_data(content)
  assert info.hparams["model"].string_value == "resnet8"
  assert info.hparams["batch_size"].number_value == 32
  assert info.group_name == "run"
  scalars = events.scalars(os.path.join(config.model_dir, "train"))
  steps, values = scalars["final/eval_accuracy"]
  assert list(steps) == [6]
  assert values[0] == pytest.approx(result.final_eval["accuracy"])
  assert scalars["final/eval_loss"][1][0] == pytest.approx(result.final_eval["loss"], rel=1e-6)


def test_profile_writes_a_trace(run):
  config, *_ = run
  traces = glob.glob(os.path.join(config.model_dir, "train", "plugins", "profile", "*",
                                  "*.xplane.pb"))
  assert len(traces) == 1 and os.path.getsize(traces[0]) > 1000
  # scripts/profile_summary.py reads it: the traced steps of resnet8 are mostly its
  # convolutions (forward and both gradients), and every kind's share adds up to 1.
  from scripts import profile_summary  # pylint: disable=g-import-not-at-top
  summary = profile_summary.summarize(profile_summary.op_events(
      profile_summary.find_trace(config.model_dir)))
  shares = {kind: ps / sum(summary["by_kind"].values())
            for kind, ps in summary["by_kind"].items()}
  assert max(shares, key=shares.get) == "convolution"
  assert {"Conv2DBackpropInput", "Conv2DBackpropFilter"} <= {
      profile_summary.base_type(t) for t in summary["by_type"]}  # oneDNN's or TF's
  assert 0 < summary["busy"] <= 1
  assert "| convolution |" in profile_summary.format_summary(summary, top=5)
  # resnet8 has no pooling layer: its global average pool is a `Mean`, which counts as a
  # reduction, not pooling.
  assert "pooling" not in shares and shares["reductions"] > 0


@pytest.mark.parametrize("hook", ["profile(start=5, stop=2)", "profile(start=-1)",
                                  "histograms(every=0)", "profile(steps='2,4')"])
def test_bad_hook_settings_are_refused(hook, make_config):
  with pytest.raises(ConfigError, match="--hooks: "):
    make_config(hooks=hook)


def test_model_summary_text_and_graph(run):
  config, _, train, _ = run
  (event,) = train.Tensors("model_summary")
  text = tf.make_ndarray(event.tensor_proto).item().decode()
  model = tf.keras.models.load_model(os.path.join(config.model_dir, "model.keras"))
  assert f"{model.count_params():,} parameters" in text
  assert "MFLOPs per image (16x16)" in text
  assert f"tensorflow {tf.__version__}" in text and "commit " in text
  assert '"model": "resnet8"' in text and "Total params" in text
  assert train.Tags()["graph"]
  assert len(train.Graph().node) > 10


def test_a_resumed_run_writes_its_graph_once(run, tmp_path):
  # A copy of `run` (its graph written by model_summary at its start), resumed.
  config = run[0].replace(hooks="model_summary", train_steps=8,
                          model_dir=str(tmp_path / "run"))
  shutil.copytree(run[0].model_dir, config.model_dir)
  assert [s for s, _ in loop.train(config).train_history] == [8]  # Resumed at 6.
  graphs = sum(bool(event.graph_def) for path in glob.glob(
      os.path.join(config.model_dir, "train", "events.out.tfevents.*"))
               for event in tf.compat.v1.train.summary_iterator(path))
  assert graphs == 1


# --- the hook mechanism -------------------------------------------------------

CALLS = []


@hooks.HOOKS.register("test_counting_hook")
def _counting_hook(config):
  """Records every callback with its step."""
  del config
  record = lambda event: lambda ctx: CALLS.append((event, ctx.step))
  return hooks.Hook(every=4, at_steps=(5, 7), on_step=record("step"),
                    at_start=record("start"), after_eval=record("eval"),
                    at_end=record("end"))


def test_custom_hook_runs_at_exactly_its_steps(make_config):
  CALLS.clear()
  # 5 steps per call and logs every 3: the loop must stop early for 4, 5, 7 and 8.
  loop.train(make_config(hooks="test_counting_hook", train_steps=12, steps_per_loop=5,
                         log_every=3, eval_every=6))
  assert [s for e, s in CALLS if e == "step"] == [4, 5, 7, 8, 12]
  assert [s for e, s in CALLS if e == "eval"] == [6, 12]
  assert [(e, s) for e, s in CALLS if e in ("start", "end")] == [("start", 0), ("end", 12)]
  assert CALLS[0] == ("start", 0) and CALLS[-1] == ("end", 12)
