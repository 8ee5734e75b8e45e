"""Exports a finished run for deployment; every export is scored against the Keras model.

Every format takes raw uint8 images [N, H, W, 3] (the preprocessing is inside the
model) and returns class probabilities [N, K]. The class names travel in
`<output>.meta.json` beside the export (and in the SavedModel's `class` output).
Models trained in mixed precision are rebuilt in float32 first: the converters fail on
bfloat16 graphs.

`open_export(path)` loads any of them back as one callable, for the parity check and
scripts/predict.py. The converters (tf2onnx, onnxruntime, ai-edge-litert) are the
optional `export` extra; TF.js lives in an environment of its own (research/tfjs.py).
"""

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from research import data as data_lib, evaluation, models, predict, tfjs
from research.config import TTA, reason
from research.sources.images import decode_image

FORMATS = ("saved_model", "keras", "litert", "litert_int8", "onnx", "tfjs")

# The least top-1 agreement with the Keras model that passes the check: float formats
# differ from it only by rounding; int8 rounds every weight and activation.
MIN_AGREEMENT = {"saved_model": 0.999, "keras": 0.999, "litert": 0.995, "onnx": 0.995,
                 "tfjs": 0.995, "litert_int8": 0.97}
META_SUFFIX = ".meta.json"
REPRESENTATIVE_IMAGES = 200  # Training images that calibrate litert_int8's ranges.


class ExportError(Exception):
  """An export that cannot be made or loaded; the message says why and what to do."""


def float32_model(model_dir, weights="model"):
  """(config, class names, model) of a run, the model rebuilt in float32 if it was
  trained in mixed precision."""
  config, class_names, model = evaluation.load_run(model_dir, weights)
  if any(layer.compute_dtype != "float32" for layer in model.layers):
    keras.mixed_precision.set_global_policy("float32")
    rebuilt = models.build(config.replace(precision="float32"))
    rebuilt.set_weights(model.get_weights())
    model = rebuilt
  return config, class_names, model


def probabilities_fn(model, dtype=tf.uint8, tta="none"):
  """images [N, H, W, 3] of `dtype`, raw pixels -> float32 probabilities [N, K], under
  test-time augmentation `tta` (its views are part of the exported graph)."""
  def probabilities(images):
    return tf.nn.softmax(predict.predict(model, tf.cast(images, tf.float32), tta)["logits"])
  size = model.input_shape[1]
  return tf.function(probabilities, input_signature=[
      tf.TensorSpec([None, size, size, 3], dtype, name="images")])


# --- the formats -----------------------------------------------------------------


def _export_keras(model, output, **_):
  model.save(output)


def _export_saved_model(model, output, class_names, tta, **_):
  """Signatures `serving_default`/`serve` (uint8 images) and `serve_bytes` (encoded
  JPEG/PNG, as serving systems send them), each -> probabilities and class name."""
  _saved_model(model, output, class_names, tta=tta)


def _saved_model(model, output, class_names=None, dtype=tf.uint8, tta="none"):
  """The SavedModel of `_export_saved_model`; without class names, only `serve`, of
  images of `dtype`, returning only the probabilities: what the converters take."""
  size = model.input_shape[1]
  probabilities = probabilities_fn(model, dtype, tta)
  names = tf.constant(class_names or [""])

  def outputs(images):
    probs = probabilities(images)
    if class_names is None:
      return {"probabilities": probs}
    return {"probabilities": probs, "class": tf.gather(names, tf.argmax(probs, -1))}

  def from_bytes(encoded):
    return outputs(tf.map_fn(lambda b: decode_image(b, size), encoded,
                             fn_output_signature=tf.TensorSpec([size, size, 3], tf.uint8)))

  archive = keras.export.ExportArchive()
  archive.track(model)
  archive.add_endpoint("serve", outputs, input_signature=[
      tf.TensorSpec([None, size, size, 3], dtype, name="images")])
  if class_names is not None:
    archive.add_endpoint("serve_bytes", from_bytes, input_signature=[
        tf.TensorSpec([None], tf.string, name="image_bytes")])
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  try:
    archive.write_out(output, verbose=False)
  finally:  # write_out(verbose=False) leaves absl's logger at WARNING: the run's INFO lines
    absl_logger.setLevel(level)  # would vanish after an export in the same process.


@contextlib.contextmanager
def _converter_input(model, tta, dtype=tf.uint8):
  """A temporary SavedModel of the probabilities alone: the converters' documented
  input (Keras 3 models traced directly leave variables and constants unfrozen)."""
  with tempfile.TemporaryDirectory() as tmp:
    _saved_model(model, tmp, dtype=dtype, tta=tta)
    yield tmp


def _export_litert(model, output, tta, representative=None, **_):
  """A .tflite flatbuffer; with `representative` images, full-integer quantized."""
  int8 = representative is not None
  with _converter_input(model, tta, tf.float32 if int8 else tf.uint8) as saved:
    converter = tf.lite.TFLiteConverter.from_saved_model(saved)
    if int8:  # uint8 in and out: the input quantization is the identity on raw pixels.
      converter.optimizations = [tf.lite.Optimize.DEFAULT]
      converter.representative_dataset = lambda: (
          [image[None].astype(np.float32)] for image in representative)
      converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
      converter.inference_input_type = tf.uint8
      converter.inference_output_type = tf.uint8
    flatbuffer = converter.convert()
  with open(output, "wb") as f:
    f.write(flatbuffer)


def _export_onnx(model, output, tta, **_):
  _optional("tf2onnx", "onnx")
  _optional("onnxruntime", "onnx")  # Needed for the check: fail before converting.
  with _converter_input(model, tta) as saved:
    done = subprocess.run([sys.executable, "-m", "tf2onnx.convert", "--saved-model", saved,
                           "--signature_def", "serving_default", "--opset", "17",
                           "--output", output], capture_output=True, text=True, check=False)
  if done.returncode:
    errors = [line for line in done.stderr.splitlines() if "Error" in line] or ["no output"]
    raise ExportError(f"tf2onnx failed: {errors[-1].strip()}")


def _export_tfjs(model, output, tta, **_):
  with _tfjs_errors():
    tfjs.convert(lambda path: _saved_model(model, path, tta=tta), output)


@contextlib.contextmanager
def _tfjs_errors():
  """TF.js's errors as ExportError, which the scripts report as one line."""
  try:
    yield
  except tfjs.TfjsError as e:
    raise ExportError(str(e)) from None


EXPORTERS = {"saved_model": _export_saved_model, "keras": _export_keras,
             "litert": _export_litert, "litert_int8": _export_litert, "onnx": _export_onnx,
             "tfjs": _export_tfjs}


def _optional(module, fmt):
  try:
    return __import__(module)
  except ImportError:
    raise ExportError(f"--format={fmt} needs the {module} package: pip install -e "
                      "'.[export]'") from None


# --- loading an export back ------------------------------------------------------


@dataclasses.dataclass
class Exported:
  """An export loaded back: `probabilities(uint8 images [N, H, W, 3]) -> [N, K]`."""
  format: str
  class_names: list
  image_size: int
  probabilities: Callable


def open_export(path, weights="model"):
  """Any export (by its .meta.json) or a run dir, as `Exported`; a run dir's model.keras
  or, with `weights="checkpoint"`, its newest checkpoint (evaluation.load_run)."""
  if os.path.isfile(os.path.join(path, "config.json")):
    config, class_names, model = evaluation.load_run(path, weights)
    return Exported("run", class_names, config.image_size,
                    _keras_runner(model, config.tta))  # Scored as the run scored it.
  if weights == "checkpoint":
    raise ExportError(f"--weights=checkpoint reads a run dir's checkpoints; {path} is not a "
                      "run dir (no config.json)")
  meta_path = path.rstrip("/") + META_SUFFIX
  if not os.path.exists(path):
    raise ExportError(f"{path} does not exist")
  if not os.path.exists(meta_path):
    raise ExportError(f"{path} has no {os.path.basename(meta_path)} beside it: it was not "
                      "made by scripts/export.py, or not with this name (a run dir works too)")
  with open(meta_path) as f:
    meta = json.load(f)
  fmt = meta["format"]
  opener = {"keras": lambda p: _keras_runner(keras.models.load_model(p)),
            "saved_model": _saved_model_runner, "litert": _litert_runner,
            "litert_int8": _litert_runner, "onnx": _onnx_runner,
            "tfjs": _tfjs_runner}[fmt]
  try:
    runner = opener(path)
  except ExportError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (each runtime fails its own way)
    raise ExportError(f"{path} cannot be loaded as {fmt} "
                      f"({reason(e)})") from None
  return Exported(fmt, meta["classes"], meta["image_size"], runner)


def _batched(fn, batch_size=256):
  return lambda images: np.concatenate([np.asarray(fn(images[i:i + batch_size]))
                                        for i in range(0, len(images), batch_size)])


def _keras_runner(model, tta="none"):
  fn = probabilities_fn(model, tta=tta)
  return _batched(lambda x: fn(tf.constant(x, tf.uint8)).numpy())


def _saved_model_runner(path):
  serve = tf.saved_model.load(path).signatures["serving_default"]
  return _batched(lambda x: serve(images=tf.constant(x, tf.uint8))["probabilities"].numpy())


def _litert_runner(path):
  try:
    from ai_edge_litert.interpreter import Interpreter  # pylint: disable=g-import-not-at-top
  except ImportError:
    Interpreter = tf.lite.Interpreter  # pylint: disable=invalid-name
  interpreter = Interpreter(model_path=path)

  def run(images):
    given = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(given["index"], images.shape)
    interpreter.allocate_tensors()
    scale, zero = given["quantization"]
    if scale:
      images = np.clip(np.round(images / scale + zero), 0, 255)
    interpreter.set_tensor(given["index"], images.astype(given["dtype"]))
    interpreter.invoke()
    out = interpreter.get_output_details()[0]
    values = interpreter.get_tensor(out["index"]).astype(np.float32)
    scale, zero = out["quantization"]
    return (values - zero) * scale if scale else values
  return _batched(run)


def _onnx_runner(path):
  onnxruntime = _optional("onnxruntime", "onnx")
  session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
  name = session.get_inputs()[0].name
  return _batched(lambda x: session.run(None, {name: x.astype(np.uint8)})[0])


def _tfjs_runner(path):
  missing = tfjs.missing()
  if missing:  # Found when the export is opened, not at its first prediction.
    raise ExportError(f"{path} is a TF.js export: {missing}")

  def run(images):
    with _tfjs_errors():
      return tfjs.predict(path, images)
  return _batched(run, batch_size=1000)


# --- export and check --------------------------------------------------------------


def size_in_bytes(path):
  if os.path.isfile(path):
    return os.path.getsize(path)
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def check(ours, theirs, labels):
  """Top-1 agreement, both accuracies and the largest probability difference of the
  Keras model's probabilities `ours` and the export's `theirs`; an export's non-finite
  row agrees with nothing (the difference is then NaN)."""
  finite = ~predict.non_finite_rows(theirs)
  return {"examples": len(labels),
          "accuracy_keras": float(np.mean(ours.argmax(-1) == labels)),
          "accuracy_export": float(np.mean(finite & (theirs.argmax(-1) == labels))),
          "agreement": float(np.mean(finite & (ours.argmax(-1) == theirs.argmax(-1)))),
          "max_probability_difference": float(np.max(np.abs(ours - theirs)))}


def latency_ms(probabilities, images, repeats=200):
  """Median milliseconds of one single-image call of `probabilities`, after a warm-up."""
  probabilities(images[:1])
  times = []
  for i in range(repeats):
    began = time.perf_counter()
    probabilities(images[i % len(images)][None])
    times.append(time.perf_counter() - began)
  return 1000 * float(np.median(times))


def check_splits(config, class_names, data_dir="", cache_dir="", skip_bad_images=False):
  """(split to check on, split to calibrate with): the run's validation and training
  splits, or every image of `data_dir` (some or all of the run's classes; its readable
  ones with `skip_bad_images`) for both."""
  if data_dir:
    split = data_lib.load_eval_folder(data_dir, class_names, config.image_size, cache_dir,
                                      skip_bad_images=skip_bad_images)
    return split, split
  splits = data_lib.load(config)
  if splits.eval is None:
    raise data_lib.DataError("the run has no validation split (--val_split=0): pass "
                             "--data_dir=DIR, a folder of the run's classes, to check on")
  return splits.eval, splits.train


def sample(max_examples, split):
  """(images, labels) of `max_examples` examples of `split`, drawn with a fixed seed and
  kept in order (a split is in class order: the first ones would be one class), or of
  all of it if 0. Only those are read: a streamed split is not decoded whole."""
  if max_examples:
    split = split.sample(max_examples)
  return split.head(len(split)), split.labels


def _check_arguments(fmt, output, tta, latency):
  """Refuses what cannot be exported before any data is read or an earlier export is
  replaced (the run's config is read first: --tta=run names its --tta)."""
  if fmt not in EXPORTERS:
    raise ExportError(f"unknown format {fmt!r}; known: {', '.join(EXPORTERS)}")
  if fmt == "keras" and not output.endswith(".keras"):
    raise ExportError(f"--format=keras writes a .keras file; got --output={output}")
  if fmt == "keras" and tta != "none":
    raise ExportError("--format=keras saves the network alone: its test-time augmentation "
                      "cannot go in it (--tta=none, or another format)")
  if tta not in TTA:
    raise ExportError(f"--tta={tta!r} is not one of: run, {', '.join(TTA)}")
  if latency and fmt == "tfjs":
    raise ExportError("--latency: a TF.js call here starts Node; time it in the browser")


def export(model_dir, fmt, output, data_dir="", max_examples=0, weights="model",
           latency=False, skip_bad_images=False, tta="none"):
  """Exports the run in `model_dir` as `fmt` to `output` and checks it; returns the
  result dict (the script's JSON line), with single-image latencies of the export and
  the Keras model if `latency`. `tta`: the test-time augmentation built into the export
  (and into the Keras reference it is checked against), or "run" for the run's --tta.
  Raises ExportError, DataError, and predict.NonFiniteError before writing anything when
  the model's outputs are not finite."""
  output = output.rstrip("/") or output
  config, class_names, model = float32_model(model_dir, weights)
  tta = config.tta if tta == "run" else tta
  _check_arguments(fmt, output, tta, latency)
  checked, calibration = check_splits(config, class_names, data_dir, config.cache_dir,
                                      skip_bad_images)
  images, labels = sample(max_examples, checked)
  reference = _keras_runner(model, tta)
  expected = reference(images)
  predict.require_finite(expected)  # A diverged run: no export, an earlier one kept.
  if os.path.exists(output):
    if not os.path.exists(output + META_SUFFIX):
      raise ExportError(f"--output {output} exists and is not an export: choose another path")
    _remove(output)  # An earlier export of ours, and its metadata: replaced.
    _remove(output + META_SUFFIX)
  parent = os.path.dirname(os.path.abspath(output))
  try:
    os.makedirs(parent, exist_ok=True)
  except OSError as e:
    raise ExportError(f"--output {output}: cannot make its directory ({e.strerror})") from None
  representative = None
  if fmt == "litert_int8":
    chosen = calibration.sample(REPRESENTATIVE_IMAGES)
    representative = chosen.head(len(chosen))
  try:
    EXPORTERS[fmt](model, output, class_names=class_names, representative=representative,
                   tta=tta)
  except BaseException:
    _remove(output)  # No half-written export left to be mistaken for one.
    raise
  meta = {"format": fmt, "classes": list(class_names), "image_size": config.image_size,
          "input": f"uint8 [N, {config.image_size}, {config.image_size}, 3], raw pixels",
          "output": "float32 probabilities [N, classes]", "tta": tta, "weights": weights,
          "run": os.path.abspath(model_dir)}
  with open(output + META_SUFFIX, "w") as f:
    json.dump(meta, f, indent=2)
  exported = open_export(output).probabilities
  result = {"format": fmt, "path": output, "bytes": size_in_bytes(output), "tta": tta,
            **check(expected, exported(images), labels),
            "min_agreement": MIN_AGREEMENT[fmt]}
  if fmt == "litert_int8" and data_dir:
    result["calibrated_on"] = "the checked images (--data_dir)"
  if latency:
    result.update(latency_ms_export=latency_ms(exported, images),
                  latency_ms_keras=latency_ms(reference, images))
  with open(output + META_SUFFIX, "w") as f:
    json.dump({**meta, "check": result}, f, indent=2)
  return result


def _remove(path):
  if os.path.isdir(path):
    shutil.rmtree(path)
  elif os.path.exists(path):
    os.remove(path)
