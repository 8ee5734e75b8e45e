"""TF.js graph models, converted and run outside this Python environment.

The `tensorflowjs` converter pins TensorFlow 2.19 (through tensorflow-decision-forests)
and does not install beside 2.21, so it lives in a virtual environment of its own,
made once by scripts/setup_tfjs.sh; the check runs the graph model in Node with
`@tensorflow/tfjs` from npm, which that script installs too. RESEARCH_TFJS_ENV and
RESEARCH_TFJS_NODE move the two places.
"""

import os
import shutil
import subprocess
import tempfile

import numpy as np

CACHE = os.path.join(os.path.expanduser("~"), ".cache", "research")
RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tfjs_predict.js")
SETUP = "make it once with scripts/setup_tfjs.sh (docs/EXPORT.md)"


class TfjsError(Exception):
  """TF.js cannot convert or run a model here; the message says why and what to do."""


def _places():
  env = os.environ.get("RESEARCH_TFJS_ENV", os.path.join(CACHE, "tfjs-env"))
  node = os.environ.get("RESEARCH_TFJS_NODE", os.path.join(CACHE, "tfjs-node"))
  return env, node


def missing():
  """Why TF.js cannot be made or run here (one line), or None."""
  env, node = _places()
  if not os.path.exists(os.path.join(env, "bin", "tensorflowjs_converter")):
    return (f"--format=tfjs needs the tensorflowjs converter in its own environment "
            f"{env} (it pins TensorFlow 2.19, so it cannot install beside 2.21): " + SETUP)
  if shutil.which("node") is None:
    return "--format=tfjs is checked in Node, and `node` is not on the PATH: install Node.js"
  if not os.path.isdir(os.path.join(node, "node_modules", "@tensorflow", "tfjs")):
    return f"--format=tfjs is checked with @tensorflow/tfjs in {node}, which is missing: " + SETUP
  return None


def convert(write_saved_model, output):
  """Writes a SavedModel with `write_saved_model(path)` and converts it to a graph model
  in the directory `output`."""
  reason = missing()
  if reason:
    raise TfjsError(reason)
  env, _ = _places()
  with tempfile.TemporaryDirectory() as tmp:
    saved = os.path.join(tmp, "saved_model")
    write_saved_model(saved)
    done = subprocess.run(
        [os.path.join(env, "bin", "tensorflowjs_converter"), "--input_format=tf_saved_model",
         "--signature_name=serving_default", "--saved_model_tags=serve", saved, output],
        capture_output=True, text=True, check=False)
  if done.returncode:
    last = (done.stderr.strip().splitlines() or ["no output"])[-1]
    raise TfjsError(f"tensorflowjs_converter failed: {last}")


def predict(path, images):
  """Probabilities [N, K] of the graph model in `path` on uint8 images, run in Node."""
  reason = missing()
  if reason:
    raise TfjsError(reason)
  _, node = _places()
  with tempfile.TemporaryDirectory() as tmp:
    given, out = os.path.join(tmp, "images.bin"), os.path.join(tmp, "probabilities.bin")
    np.ascontiguousarray(images, np.uint8).tofile(given)
    done = subprocess.run(
        ["node", RUNNER, path, given, *map(str, images.shape[:3]), out],
        env=dict(os.environ, NODE_PATH=os.path.join(node, "node_modules")),
        capture_output=True, text=True, check=False)
    if done.returncode:
      last = (done.stderr.strip().splitlines() or ["no output"])[-1]
      raise TfjsError(f"the TF.js model failed in Node: {last}")
    return np.fromfile(out, np.float32).reshape(len(images), -1)
