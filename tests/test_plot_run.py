import os
import shutil

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from research import events, loop, plots
from scripts import plot_run
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory):
  """Two finished 6-step runs that differ in learning rate, trained once for the module."""
  config = tiny_config(tmp_path_factory.mktemp("trained"), eval_every=3)
  runs = [config.model_dir + "_a", config.model_dir + "_b"]
  results = [loop.train(config.replace(model_dir=runs[0])),
             loop.train(config.replace(model_dir=runs[1], learning_rate=0.01))]
  return runs, results


@pytest.fixture
def two_runs(trained_runs, tmp_path):
  """This test's own copies of `trained_runs` (named run_a, run_b), to plot into or damage."""
  runs, results = trained_runs
  copies = [str(tmp_path / os.path.basename(run)) for run in runs]
  for run, copy in zip(runs, copies):
    shutil.copytree(run, copy)
  return copies, results


def test_scalars_are_read_back_by_step(two_runs):
  (run, _), (result, _) = two_runs
  scalars = events.run_scalars(run)
  steps, values = scalars["train"]["loss"]
  assert list(steps) == [s for s, _ in result.train_history]
  np.testing.assert_allclose(values, [m["loss"] for _, m in result.train_history], rtol=1e-6)
  assert list(scalars["eval"]["accuracy"][0]) == [3, 6]
  assert {"learning_rate", "images_per_second"} <= set(scalars["train"])


def test_one_run_plots_into_its_own_dir(two_runs):
  run = two_runs[0][0]
  plot_run.plot([run], examples=40)
  out = os.path.join(run, "plots")
  width, height = (int(inches * plots.DPI) for inches in plots.CURVES_SIZE)
  expected = {"curves.png": (width, height), "learning_rate.png": (600, 400),
              "images_per_second.png": (600, 400), "predictions.png": (1000, 1100),
              "confusion_matrix.png": (800, 700), "confident_mistakes.png": None}
  assert sorted(os.listdir(out)) == sorted(expected)
  for name, size in expected.items():
    image = np.array(Image.open(os.path.join(out, name)).convert("L"))
    assert image.std() > 5  # something is drawn
    if size:
      assert image.shape == (size[1], size[0])


def test_several_runs_overlay_and_prefix_their_predictions(two_runs, tmp_path):
  runs = two_runs[0]
  paths, lacking = plot_run.plot_runs(runs, str(tmp_path / "plots"), examples=40)
  assert not lacking
  names = {os.path.basename(p) for p in paths}
  assert {"curves.png", "run_a_predictions.png", "run_b_confusion_matrix.png"} <= names
  one = plots.to_png(plots.curves_figure({"a": events.run_scalars(runs[0])}))
  with open(tmp_path / "plots" / "curves.png", "rb") as f:
    assert f.read() != one  # the second run's lines are drawn too


def test_missing_run_is_refused(tmp_path, capsys):
  with pytest.raises(SystemExit, match="no TensorBoard events"):
    plot_run.plot([str(tmp_path / "nothing")])
  with pytest.raises(SystemExit, match="^error: name at least one run dir"):
    plot_run.plot([])
  assert not capsys.readouterr().err


def test_an_out_dir_that_cannot_be_written_is_one_error(two_runs, tmp_path):
  (tmp_path / "a_file").write_text("")
  with pytest.raises(SystemExit, match="error: cannot write the plots in .*a_file"):
    plot_run.plot([two_runs[0][0]], str(tmp_path / "a_file"), predictions=False)


def _stopped_before_its_first_log(config):
  """The run `config` as Ctrl-C leaves it before its first log: a checkpoint, event files
  without a scalar, no model.keras."""
  loop.train(config)
  os.remove(os.path.join(config.model_dir, "model.keras"))
  for split in events.SPLITS:
    shutil.rmtree(os.path.join(config.model_dir, split), ignore_errors=True)
  writer = tf.summary.create_file_writer(os.path.join(config.model_dir, "train"))
  with writer.as_default():
    tf.summary.text("config", "a run that logged nothing yet", step=0)
  writer.close()


def test_a_run_stopped_before_its_first_log_draws_what_there_is(make_config, capsys):
  config = make_config()
  _stopped_before_its_first_log(config)
  assert events.run_scalars(config.model_dir) == {"train": {}}
  with pytest.raises(SystemExit, match=r"^error: nothing to draw yet: .* has logged no "
                     r"scalars yet.*no model.keras.*pass --weights=checkpoint"):
    plot_run.plot([config.model_dir])
  plot_run.plot([config.model_dir], examples=10, weights="checkpoint")
  assert sorted(os.listdir(os.path.join(config.model_dir, "plots"))) == [
      "confident_mistakes.png", "confusion_matrix.png", "predictions.png"]
  assert "warning: " in capsys.readouterr().err  # No curves: said, not drawn empty.


def test_a_run_in_progress_draws_its_curves_and_says_why_no_predictions(two_runs, capsys):
  run = two_runs[0][0]
  os.remove(os.path.join(run, "model.keras"))
  plot_run.plot([run])
  assert sorted(os.listdir(os.path.join(run, "plots"))) == [
      "curves.png", "images_per_second.png", "learning_rate.png"]
  assert "warning: no prediction figures: " in capsys.readouterr().err


def test_negative_examples_are_refused():
  with pytest.raises(SystemExit, match=r"^error: --examples=-5 must be >= 0"):
    plot_run.plot(["any_run"], examples=-5)
