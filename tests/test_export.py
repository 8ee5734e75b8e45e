"""scripts/export.py's formats, each checked against the Keras model, and predict.py."""

import importlib.util
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys

import keras
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from research import export, loop, models, predict, tfjs
from research.config import Config
from research.sources import DataError
from research.sources.memory import Arrays
from tests.conftest import ROOT, tiny_config

SUFFIX = {"keras": ".keras", "litert": ".tflite", "litert_int8": ".tflite", "onnx": ".onnx"}


def _missing(fmt):
  """Why `fmt` cannot run here, or None. CI installs the export extra; TF.js needs
  scripts/setup_tfjs.sh, which CI does not run."""
  if fmt == "onnx":
    absent = [m for m in ("tf2onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    return f"{', '.join(absent)} not installed (pip install -e '.[export]')" if absent else None
  if fmt == "tfjs":
    return tfjs.missing()
  return None


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A tiny run that has learned something: parity on near-uniform outputs would only
  measure ties."""
  tmp = tmp_path_factory.mktemp("export")
  config = tiny_config(tmp, train_steps=40, optimizer="adam", learning_rate=2e-3,
                       weight_decay=0.0, augment="", eval_every=40, checkpoint_every=40,
                       log_every=40, num_classes=4)
  loop.train(config)
  return config.model_dir


@pytest.mark.parametrize("fmt", export.FORMATS)
def test_each_format_matches_the_keras_model(fmt, run_dir, tmp_path):
  if _missing(fmt):
    pytest.skip(_missing(fmt))
  output = str(tmp_path / f"model{SUFFIX.get(fmt, '')}")
  result = export.export(run_dir, fmt, output, latency=fmt == "litert_int8")
  assert result["examples"] == 64 and result["bytes"] > 1000
  assert result["agreement"] >= export.MIN_AGREEMENT[fmt], result
  assert result["accuracy_keras"] > 0.5  # What the agreement is measured on is not noise.
  if fmt == "litert_int8":
    assert 0 < result["latency_ms_export"] < 1000 and result["latency_ms_keras"] > 0
  loaded = export.open_export(output)
  meta = json.load(open(output + export.META_SUFFIX))
  assert loaded.class_names == meta["classes"] == json.load(
      open(os.path.join(run_dir, "classes.json")))
  images = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
  probabilities = loaded.probabilities(images)
  assert probabilities.shape == (3, 4)
  np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=0.02)


def test_saved_model_takes_encoded_images_and_names_the_class(run_dir, tmp_path):
  output = str(tmp_path / "saved_model")
  level = logging.getLogger("absl").level
  export.export(run_dir, "saved_model", output)
  assert logging.getLogger("absl").level == level  # Keras' export leaves it at WARNING.
  image = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
  encoded = io.BytesIO()
  Image.fromarray(image).save(encoded, format="PNG")
  loaded = tf.saved_model.load(output)
  from_bytes = loaded.signatures["serve_bytes"](image_bytes=tf.constant([encoded.getvalue()]))
  from_pixels = loaded.signatures["serving_default"](images=tf.constant(image[None]))
  np.testing.assert_allclose(from_bytes["probabilities"], from_pixels["probabilities"])
  names = json.load(open(os.path.join(run_dir, "classes.json")))
  top = int(np.argmax(from_pixels["probabilities"][0]))
  assert from_pixels["class"].numpy()[0].decode() == names[top]


def test_a_bfloat16_model_is_rebuilt_in_float32_for_the_converters(run_dir, tmp_path):
  # The tiny run's weights in a model built under mixed_bfloat16, as such a run saves it.
  bf16_dir = tmp_path / "bf16_run"
  bf16_dir.mkdir()
  config = Config.load(os.path.join(run_dir, "config.json")).replace(
      precision="mixed_bfloat16", model_dir=str(bf16_dir))
  keras.mixed_precision.set_global_policy("mixed_bfloat16")
  try:
    model = models.build(config)
  finally:
    keras.mixed_precision.set_global_policy("float32")
  model.set_weights(keras.models.load_model(os.path.join(run_dir, "model.keras")).get_weights())
  model.save(str(bf16_dir / "model.keras"))
  config.save(str(bf16_dir / "config.json"))
  with open(bf16_dir / "classes.json", "w") as f:
    f.write(open(os.path.join(run_dir, "classes.json")).read())
  _, _, rebuilt = export.float32_model(str(bf16_dir))
  assert {layer.compute_dtype for layer in rebuilt.layers} == {"float32"}
  result = export.export(str(bf16_dir), "litert", str(tmp_path / "model.tflite"),
                         data_dir="")
  assert result["agreement"] >= export.MIN_AGREEMENT["litert"]


def test_tfjs_without_its_environment_says_how_to_make_it(run_dir, tmp_path, monkeypatch):
  monkeypatch.setenv("RESEARCH_TFJS_ENV", str(tmp_path / "none"))
  with pytest.raises(export.ExportError, match="scripts/setup_tfjs.sh"):
    export.export(run_dir, "tfjs", str(tmp_path / "tfjs"))
  assert not os.path.exists(tmp_path / "tfjs")


class _CountedReads(Arrays):
  """A split that records how many images were read from it."""
  read_counts = []

  def subset(self, indices):
    return _CountedReads(self.images[indices], self.labels[indices])

  def head(self, count):
    self.read_counts.append(count)
    return super().head(count)


def test_max_examples_checks_a_sample_of_every_class_and_reads_only_it(run_dir, tmp_path):
  ids = np.broadcast_to(np.arange(64, dtype=np.uint8)[:, None, None, None], (64, 1, 1, 3))
  split = _CountedReads(ids, np.repeat(np.arange(4), 16))  # A split's class order.
  images, labels = export.sample(8, split)
  assert _CountedReads.read_counts == [8]  # Not the whole split, then a sample of it.
  order = images[:, 0, 0, 0]
  assert len(labels) == 8 and len(set(labels)) > 1 and list(order) == sorted(order)
  np.testing.assert_array_equal(labels, split.labels[order])
  np.testing.assert_array_equal(export.sample(8, split)[0], images)
  assert len(export.sample(0, split)[1]) == 64
  result = export.export(run_dir, "keras", str(tmp_path / "model.keras"), max_examples=8)
  assert result["examples"] == 8


def test_test_time_augmentation_is_built_into_the_export(run_dir, tmp_path):
  output = str(tmp_path / "model.tflite")
  result = export.export(run_dir, "litert", output, tta="flip_translate")
  assert result["tta"] == "flip_translate"
  assert result["agreement"] >= export.MIN_AGREEMENT["litert"], result
  assert json.load(open(output + export.META_SUFFIX))["tta"] == "flip_translate"
  _, _, model = export.float32_model(run_dir)
  images = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
  np.testing.assert_allclose(export.open_export(output).probabilities(images),
                             predict.probabilities(model, images, "flip_translate"),
                             atol=1e-4)
  # The run dir itself predicts as the run scored it: with its --tta.
  run_tta = Config.load(os.path.join(run_dir, "config.json")).tta
  np.testing.assert_allclose(export.open_export(run_dir).probabilities(images),
                             predict.probabilities(model, images, run_tta), atol=1e-5)


def test_arguments_that_cannot_export_are_refused_before_an_earlier_export_is_replaced(
    run_dir, tmp_path):
  earlier = str(tmp_path / "model.tflite")
  export.export(run_dir, "litert", earlier, max_examples=4)  # One for every refusal.
  for fmt, output, kwargs, message in (
      ("keras", "model.keras", dict(tta="flip"), "its test-time augmentation cannot go in"),
      ("keras", "model.tflite", {}, "--format=keras writes a .keras file"),
      ("tfjs", "tfjs", dict(latency=True), "--latency: a TF.js call")):
    with pytest.raises(export.ExportError, match=message):
      export.export(run_dir, fmt, str(tmp_path / output), **kwargs)
    assert os.path.exists(earlier) and os.path.exists(earlier + export.META_SUFFIX)
    assert not os.path.exists(tmp_path / "model.keras")
    assert not os.path.exists(tmp_path / "tfjs")


def test_a_directory_output_with_a_trailing_slash_keeps_its_metadata_beside_it(run_dir,
                                                                              tmp_path):
  export.export(run_dir, "saved_model", str(tmp_path / "sm") + "/", max_examples=4)
  assert os.path.exists(tmp_path / "sm.meta.json")
  assert not os.path.exists(tmp_path / "sm" / ".meta.json")
  for path in (str(tmp_path / "sm"), str(tmp_path / "sm") + "/"):
    assert export.open_export(path).format == "saved_model"


def test_a_run_whose_plugin_is_gone_is_one_error(run_dir, tmp_path):
  moved = tmp_path / "run"
  shutil.copytree(run_dir, moved)
  config = Config.load(str(moved / "config.json"))
  config.replace(plugins=str(tmp_path / "my_augment.py")).save(str(moved / "config.json"))
  with pytest.raises(DataError, match=r"cannot import .*my_augment.py.*trained with it"):
    export.open_export(str(moved))


def test_an_existing_path_that_is_not_an_export_is_kept(run_dir, tmp_path):
  output = tmp_path / "notes.keras"
  output.write_text("mine")
  with pytest.raises(export.ExportError, match="exists and is not an export"):
    export.export(run_dir, "keras", str(output))
  assert output.read_text() == "mine"
  with pytest.raises(export.ExportError, match="cannot make its directory"):
    export.export(run_dir, "keras", str(output / "model.keras"))


def _script(name, *args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  done = subprocess.run([sys.executable, os.path.join("scripts", name), *args], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=300)
  return done.returncode, done.stdout, done.stderr


def test_export_and_predict_scripts_end_in_json(run_dir, tmp_path):
  output = str(tmp_path / "model.keras")
  code, out, err = _script("export.py", f"--model_dir={run_dir}", "--format=keras",
                           f"--output={output}")
  assert code == 0, err[-2000:]
  result = json.loads(out.strip().splitlines()[-1])
  assert result["format"] == "keras" and result["agreement"] == 1.0

  images = tmp_path / "images"
  images.mkdir()
  for i in range(2):
    Image.fromarray(np.full((20, 24, 3), 60 * i, np.uint8)).save(images / f"{i}.png")
  (images / "readme.txt").write_text("not an image")
  code, out, err = _script("predict.py", f"--model={output}", "--top_k=2", str(images),
                           str(tmp_path / "missing.jpg"))
  assert code == 0, err[-2000:]
  entries = json.loads(out.strip().splitlines()[-1])
  assert [os.path.basename(e["path"]) for e in entries] == [
      "0.png", "1.png", "readme.txt", "missing.jpg"]
  assert all(len(e["top"]) == 2 for e in entries[:2])
  assert "cannot be decoded" in entries[2]["error"] and entries[3]["error"] == "no such file"
  assert err.count("error:") == 2
  (tmp_path / "empty").mkdir()
  code, _, err = _script("predict.py", f"--model={output}", str(tmp_path / "empty"))
  assert code == 1 and "error: no files in" in err


FAILING_CHECK = """
import runpy, sys
sys.path.insert(0, {root!r})
from research import export
export.MIN_AGREEMENT["keras"] = 1.01  # Beyond any agreement: the check fails.
sys.argv = ["export.py", "--model_dir={run_dir}", "--format=keras", "--output={output}"]
runpy.run_path("scripts/export.py", run_name="__main__")
"""


def test_an_export_failing_its_check_says_by_how_many_images_and_that_it_is_kept(
    run_dir, tmp_path):
  output = tmp_path / "model.keras"
  result = subprocess.run([sys.executable, "-c", FAILING_CHECK.format(
      root=ROOT, run_dir=run_dir, output=output)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 1
  assert re.search(r"error: agreement 1\.0000 is below 1\.01 for keras \(0 of \d+ images "
                   rf"differ\); the export is kept in {re.escape(str(output))}", result.stderr)
  assert output.exists()


def test_predict_refuses_a_model_it_cannot_open(tmp_path):
  bogus = tmp_path / "model.onnx"
  bogus.write_text("not a model")
  code, _, err = _script("predict.py", f"--model={bogus}", str(bogus))
  assert code == 1 and "error:" in err and "meta.json" in err


def _copy_without_model(run_dir, tmp_path):
  """A copy of the run as Ctrl-C leaves one: config, classes, checkpoints, no model.keras."""
  stopped = tmp_path / "stopped"
  shutil.copytree(run_dir, stopped)
  os.remove(stopped / "model.keras")
  return stopped


def _images(folder, count=2, size=16):
  os.makedirs(folder, exist_ok=True)
  for i in range(count):
    Image.fromarray(np.full((size, size, 3), 60 * i, np.uint8)).save(folder / f"{i}.png")
  return folder


def test_predict_reads_a_stopped_run_with_weights_checkpoint(run_dir, tmp_path):
  stopped, image = _copy_without_model(run_dir, tmp_path), _images(tmp_path / "i") / "0.png"
  code, _, err = _script("predict.py", f"--model={stopped}", str(image))
  assert code == 1 and "has no model.keras" in err and "pass --weights=checkpoint" in err
  assert len(err.strip().splitlines()) == 1
  code, out, err = _script("predict.py", f"--model={stopped}", "--weights=checkpoint",
                           str(image))
  assert code == 0, err[-2000:]
  assert len(json.loads(out.strip().splitlines()[-1])[0]["top"]) == 3
  with pytest.raises(export.ExportError, match="--weights=checkpoint reads a run dir"):
    export.open_export(str(image), weights="checkpoint")


def _diverged_copy(run_dir, tmp_path):
  """A copy of the run whose model.keras holds NaN weights, as after --learning_rate=1e12."""
  diverged = tmp_path / "diverged"
  shutil.copytree(run_dir, diverged)
  model = keras.models.load_model(diverged / "model.keras")
  model.set_weights([np.full_like(w, np.nan) if w.dtype.kind == "f" else w
                     for w in model.get_weights()])
  model.save(diverged / "model.keras")
  return diverged


def test_a_model_with_non_finite_outputs_is_an_error_everywhere(run_dir, tmp_path):
  from research import evaluation  # pylint: disable=g-import-not-at-top
  diverged = _diverged_copy(run_dir, tmp_path)
  classes = json.load(open(diverged / "classes.json"))
  folder = _images(tmp_path / "images" / classes[0]).parent
  with pytest.raises(predict.NonFiniteError, match=r"outputs are not finite \(NaN or inf\) "
                     r"on 2 of 2 images.*lower --learning_rate"):
    evaluation.score_folder(str(diverged), str(folder))
  output = tmp_path / "model.keras"
  code, out, err = _script("export.py", f"--model_dir={diverged}", "--format=keras",
                           f"--output={output}")
  assert code == 1 and err.startswith("error: the model's outputs are not finite"), err
  assert not output.exists() and not out
  code, out, err = _script("predict.py", f"--model={diverged}", str(folder))
  assert code == 1 and "error: the model's outputs are not finite (NaN or inf) on 2 of 2" in err
  entries = json.loads(out.strip().splitlines()[-1])  # Valid JSON: no bare NaN.
  assert [e["error"] for e in entries] == ["the model's outputs are not finite"] * 2


def test_an_exports_non_finite_outputs_agree_with_nothing():
  ours = np.array([[0.9, 0.1], [0.2, 0.8]], np.float32)
  theirs = np.array([[np.nan, np.nan], [0.2, 0.8]], np.float32)
  result = export.check(ours, theirs, np.array([0, 1]))
  assert result["agreement"] == 0.5 and result["accuracy_export"] == 0.5


def test_a_damaged_run_dir_is_one_error(run_dir, tmp_path):
  from research import evaluation  # pylint: disable=g-import-not-at-top
  (tmp_path / "a_file").write_text("")
  with pytest.raises(DataError, match="is a file, not a run's model dir"):
    evaluation.load_run(str(tmp_path / "a_file"))
  damaged = tmp_path / "damaged"
  shutil.copytree(run_dir, damaged)
  os.remove(damaged / "classes.json")
  with pytest.raises(DataError, match="its classes.json cannot be read"):
    export.open_export(str(damaged))
  (damaged / "config.json").write_text('{"model": ')
  with pytest.raises(DataError, match=r"config.json is damaged \(Expecting value"):
    export.open_export(str(damaged))
