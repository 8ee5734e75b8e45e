"""Plots runs as PNGs: curves from their event files, predictions of their models.

  python scripts/plot_run.py runs/resnet20_cifar10                # -> RUN/plots/*.png
  python scripts/plot_run.py runs/a runs/b --out_dir=plots/ab     # runs overlaid
  python scripts/plot_run.py runs/stopped --weights=checkpoint    # a run without model.keras

Writes curves.png (the Keras tutorial's accuracy and loss panels, train dashed and
eval solid), learning_rate.png, images_per_second.png and, per run with a saved model
(--weights=checkpoint: its newest checkpoint), [RUN_]predictions.png,
[RUN_]confusion_matrix.png and [RUN_]confident_mistakes.png on the first --examples
examples (default: all) of its validation (or test) data, with the run's test-time
augmentation, as the run's logged evaluation scored them. It draws what there is: a
run not finished yet has curves but no model.keras (a `warning:` line says so); a run
stopped before its first log has no curves. With nothing to draw at all, it says so in
one `error:` line and exits 1.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags, logging  # noqa: E402

from scripts import cli  # noqa: E402

# The research modules that draw import TensorFlow: each function imports them where it
# needs them, so that an argument error or --help is one quick line without it.
FLAGS = flags.FLAGS


def _define_flags():
  """Only when run as a script: tests import this module beside other flag owners."""
  flags.DEFINE_string("out_dir", "", "where the PNGs go (default: RUN/plots for one run, "
                      "else ./plots)")
  flags.DEFINE_integer("examples", 0, "evaluation examples behind the prediction figures "
                       "(0: all)")
  flags.DEFINE_bool("no_predictions", False, "skip loading the models (curves only)")
  cli.define_weights_flag()


class NothingToDraw(Exception):
  """No scalars logged and no model to draw: the message says what each run lacks."""


def run_name(run_dir):
  return os.path.basename(os.path.normpath(run_dir))


def curve_figures(runs):
  """{file stem: Figure} of the scalar curves; `runs` is {name: run_scalars}, {} if none
  has logged any."""
  if not runs:
    return {}
  from research import plots  # pylint: disable=g-import-not-at-top
  return {"curves": plots.curves_figure(runs),
          "learning_rate": plots.line_figure(runs, "train", "learning_rate", "learning rate"),
          "images_per_second": plots.line_figure(runs, "train", "images_per_second",
                                                 "training images / second")}


def model_figures(run_dir, examples, weights="model"):
  """{file stem: Figure} of the run's model (evaluation.load_run) on its own evaluation
  data."""
  from research import data, evaluation, tensorboard_hooks  # pylint: disable=g-import-not-at-top
  config, class_names, model = evaluation.load_run(run_dir, weights)
  split = data.load(config).eval
  if split is None:  # Trained on a whole folder with nothing to evaluate on.
    return {}
  return tensorboard_hooks.prediction_figures(model, split, class_names, examples, config.tta)


def all_figures(run_dirs, examples, predictions=True, weights="model"):
  """({file stem: Figure} of what `run_dirs` have to draw, [what they lack, one line
  each])."""
  from research import evaluation, events  # pylint: disable=g-import-not-at-top
  scalars = {run_name(r): events.run_scalars(r) for r in run_dirs}
  logged = {name: splits for name, splits in scalars.items() if any(splits.values())}
  missing = [f"{r} has logged no scalars yet (the first come after --log_every steps)"
             for r in run_dirs if run_name(r) not in logged]
  figures = curve_figures(logged)
  for run_dir in run_dirs if predictions else ():
    prefix = "" if len(run_dirs) == 1 else run_name(run_dir) + "_"
    try:
      drawn = model_figures(run_dir, examples, weights)
    except evaluation.Unfinished as e:  # The curves of a run in progress are still drawn.
      missing.append(f"no prediction figures: {e}")
      continue
    figures.update({prefix + stem: figure for stem, figure in drawn.items()})
  return figures, missing


def plot_runs(run_dirs, out_dir, examples, predictions=True, weights="model"):
  """Writes every figure of `run_dirs` to `out_dir`; returns (the PNG paths, [what the
  runs lack, one line each]), or raises NothingToDraw."""
  from research import plots  # pylint: disable=g-import-not-at-top
  figures, missing = all_figures(run_dirs, examples, predictions, weights)
  if not figures:
    raise NothingToDraw("; ".join(missing))
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for stem, figure in figures.items():
    paths.append(os.path.join(out_dir, stem + ".png"))
    with open(paths[-1], "wb") as f:
      f.write(plots.to_png(figure))
  return paths, missing


def check_arguments(run_dirs, examples):
  """One `error:` line (SystemExit) for arguments that name nothing to draw."""
  if not run_dirs:
    sys.exit("error: name at least one run dir: plot_run.py RUN [RUN ...]")
  if examples < 0:
    sys.exit(f"error: --examples={examples} must be >= 0 (0: all)")
  missing = [r for r in run_dirs if not os.path.isdir(os.path.join(r, "train"))]
  if missing:
    sys.exit(f"error: no TensorBoard events (RUN/train) in: {', '.join(missing)}")


def plot(run_dirs, out_dir="", examples=0, predictions=True, weights="model"):
  """The script without its flags: plots `run_dirs`, prints the paths; one `error:`
  line (SystemExit) for what cannot be drawn."""
  check_arguments(run_dirs, examples)
  from research import data  # pylint: disable=g-import-not-at-top
  out_dir = out_dir or (os.path.join(run_dirs[0], "plots") if len(run_dirs) == 1
                        else "plots")
  try:
    paths, lacking = plot_runs(run_dirs, out_dir, examples, predictions, weights)
  except NothingToDraw as e:
    sys.exit(f"error: nothing to draw yet: {e}")
  except data.DataError as e:
    sys.exit(f"error: {e}")
  except OSError as e:  # --out_dir is a file, or not writable.
    sys.exit(f"error: cannot write the plots in {out_dir}: {e.strerror}")
  for line in lacking:
    print(f"warning: {line}", file=sys.stderr)
  print("\n".join(paths))


def main(argv):
  logging.set_verbosity(logging.WARNING)  # Not TensorBoard's event-reading INFO lines.
  check_arguments(argv[1:], FLAGS.examples)  # Before TensorFlow loads.
  from research import startup  # pylint: disable=g-import-not-at-top
  startup.import_tensorflow()  # Without its start-up noise before the script's lines.
  plot(argv[1:], FLAGS.out_dir, FLAGS.examples, not FLAGS.no_predictions, FLAGS.weights)


if __name__ == "__main__":
  _define_flags()
  cli.run(main)
