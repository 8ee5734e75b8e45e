"""Plots finished runs as PNGs: curves from their event files, predictions of the final model.

  python scripts/plot_run.py runs/resnet20_cifar10                # -> RUN/plots/*.png
  python scripts/plot_run.py runs/a runs/b --out_dir=plots/ab     # runs overlaid

Writes curves.png (the Keras tutorial's accuracy and loss panels, train dashed and
eval solid), learning_rate.png, images_per_second.png and, per run with a saved model,
[RUN_]predictions.png, [RUN_]confusion_matrix.png and [RUN_]confident_mistakes.png on
the first --examples examples (default: all) of its validation (or test) data, with
the run's test-time augmentation, as the run's logged evaluation scored them.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from research import startup  # noqa: E402

if __name__ == "__main__":
  startup.import_tensorflow()  # Without its start-up noise before the script's lines.

from research import data, evaluation, events, plots, tensorboard_hooks  # noqa: E402


def parse_args(argv):
  parser = startup.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("runs", nargs="+", metavar="RUN", help="model dirs of training runs")
  parser.add_argument("--out_dir", default="",
                      help="where the PNGs go (default: RUN/plots for one run, else ./plots)")
  parser.add_argument("--examples", type=int, default=0,
                      help="evaluation examples behind the prediction figures (0: all)")
  parser.add_argument("--no_predictions", action="store_true",
                      help="skip loading the models (curves only)")
  return parser.parse_args(argv)


def run_name(run_dir):
  return os.path.basename(os.path.normpath(run_dir))


def curve_figures(runs):
  """{file stem: Figure} of the scalar curves; `runs` is {name: run_scalars}."""
  return {"curves": plots.curves_figure(runs),
          "learning_rate": plots.line_figure(runs, "train", "learning_rate", "learning rate"),
          "images_per_second": plots.line_figure(runs, "train", "images_per_second",
                                                 "training images / second")}


def model_figures(run_dir, examples):
  """{file stem: Figure} of the run's final model on its own evaluation data."""
  config, class_names, model = evaluation.load_run(run_dir)
  split = data.load(config).eval
  if split is None:  # Trained on a whole folder with nothing to evaluate on.
    return {}
  return tensorboard_hooks.prediction_figures(model, split, class_names, examples, config.tta)


def plot_runs(run_dirs, out_dir, examples, predictions=True):
  """Writes every figure of `run_dirs` to `out_dir`; returns the PNG paths."""
  figures = curve_figures({run_name(r): events.run_scalars(r) for r in run_dirs})
  for run_dir in run_dirs if predictions else ():
    prefix = "" if len(run_dirs) == 1 else run_name(run_dir) + "_"
    for stem, figure in model_figures(run_dir, examples).items():
      figures[prefix + stem] = figure
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for stem, figure in figures.items():
    paths.append(os.path.join(out_dir, stem + ".png"))
    with open(paths[-1], "wb") as f:
      f.write(plots.to_png(figure))
  return paths


def main(argv=None):
  args = parse_args(argv)
  missing = [r for r in args.runs if not os.path.isdir(os.path.join(r, "train"))]
  if missing:
    sys.exit(f"error: no TensorBoard events (RUN/train) in: {', '.join(missing)}")
  out_dir = args.out_dir or (os.path.join(args.runs[0], "plots") if len(args.runs) == 1
                             else "plots")
  try:
    paths = plot_runs(args.runs, out_dir, args.examples, not args.no_predictions)
  except data.DataError as e:
    sys.exit(f"error: {e}")
  except OSError as e:  # --out_dir is a file, or not writable.
    sys.exit(f"error: cannot write the plots in {out_dir}: {e.strerror}")
  print("\n".join(paths))


if __name__ == "__main__":
  main()
