"""Top-k classes of images under any export of scripts/export.py, or a run dir.

  python scripts/predict.py --model=PATH [--top_k=3] IMAGE_OR_DIR ...
  python scripts/predict.py --model=RUN --weights=checkpoint IMAGE ...  # a stopped run

A directory means every file in it (and its subfolders). Prints one line per image; an
image that cannot be read gets one `error:` line and the others are still predicted.
The last line is JSON, one entry per image: {"path": ..., "top": [[class, probability],
...]} or {"path": ..., "error": ...}. Exit status 1 if no image could be predicted, or
if the model's outputs are not finite for any image (one `error:` line says for how
many; those entries carry the error).
"""

import os
import sys

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from scripts import cli  # noqa: E402

flags.DEFINE_string("model", None, "an export (saved_model, .keras, .tflite, .onnx, tfjs "
                    "dir, with its .meta.json) or a run dir", required=True)
flags.DEFINE_integer("top_k", 3, "classes shown per image")
cli.define_weights_flag()  # Of a run dir; an export has its weights.
FLAGS = flags.FLAGS


def image_files(paths):
  """[(path, error or None)]: files as given, directories expanded in sorted order."""
  found = []
  for path in paths:
    if os.path.isdir(path):
      found += [(os.path.join(d, f), None) for d, subdirs, files in sorted(os.walk(path))
                for f in sorted(files) if not f.startswith(".")]
    else:
      found.append((path, None if os.path.isfile(path) else "no such file"))
  return found


def predictions(model, files, top_k):
  """(one JSON entry per file, in order; the `error:` line of non-finite outputs or None).

  Raises export.ExportError when the model's runtime fails on the images."""
  from research import predict  # pylint: disable=g-import-not-at-top
  from research.sources.images import decode_images  # pylint: disable=g-import-not-at-top
  readable = [path for path, error in files if error is None]
  images, ok = decode_images(readable, model.image_size) if readable else ([], [])
  decoded = [path for i, path in enumerate(readable) if ok[i]]
  probabilities = model.probabilities(images[ok]) if decoded else np.zeros([0, 1])
  row = {path: n for n, path in enumerate(decoded)}
  not_finite = predict.non_finite_rows(probabilities)
  entries = []
  for path, error in files:
    if error is None and path not in row:
      error = "not an image this model can read (cannot be decoded)"
    if error:
      print(f"error: {path}: {error}", file=sys.stderr)
      entries.append({"path": path, "error": error})
    elif not_finite[row[path]]:  # Said once for them all, below.
      entries.append({"path": path, "error": "the model's outputs are not finite"})
    else:
      probs = probabilities[row[path]]
      top = [[model.class_names[k], round(float(probs[k]), 6)]
             for k in probs.argsort()[::-1][:top_k]]
      print(f"{path}: " + ", ".join(f"{name} {p:.3f}" for name, p in top))
      entries.append({"path": path, "top": top})
  try:
    predict.require_finite(probabilities)
    return entries, None
  except predict.NonFiniteError as e:
    return entries, f"error: {e}"


def main(argv):
  if len(argv) < 2:
    sys.exit("error: name at least one image or directory: predict.py --model=PATH IMAGE ...")
  if FLAGS.top_k < 1:
    sys.exit("error: --top_k must be >= 1")
  files = image_files(argv[1:])  # Said at once, before TensorFlow and the model load.
  if not files:
    sys.exit(f"error: no files in {', '.join(argv[1:])}")
  if not os.path.exists(FLAGS.model):  # A mistyped path, also said before TensorFlow.
    sys.exit(f"error: {FLAGS.model} does not exist")
  from research import startup  # pylint: disable=g-import-not-at-top
  startup.import_tensorflow()  # Without its start-up noise before our lines.
  from research import data, export  # pylint: disable=g-import-not-at-top
  try:
    model = export.open_export(FLAGS.model, FLAGS.weights)
  except (export.ExportError, data.DataError) as e:
    sys.exit(f"error: {e}")
  try:
    entries, not_finite = predictions(model, files, FLAGS.top_k)
  except export.ExportError as e:  # A runtime failing on these images (Node for TF.js).
    sys.exit(f"error: {e}")
  if not_finite:
    print(not_finite, file=sys.stderr)
  print(cli.json_line(entries))
  sys.exit(0 if any("top" in entry for entry in entries) and not not_finite else 1)


if __name__ == "__main__":
  cli.run(main)
