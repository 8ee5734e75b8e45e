"""train.py and scripts/evaluate.py as a user runs them, in subprocesses."""

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from research import plugins
from research.config import ConfigError
from tests.conftest import ROOT


def run(script, *args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], cwd=ROOT,
                        capture_output=True, text=True, env=env, timeout=300)


# One case per path through train.py; the messages of every registry item and value
# are tested in-process (test_config.py). Core values fail before TensorFlow loads.
@pytest.mark.parametrize("args, message", [
    (["--strategy=tpu"], "--strategy='tpu' is not one of"),
    (["--dataset=synthetic", "--model=nope"],
     "error: --model: unknown model 'nope'; known: airbench"),
    (["--list=nothing"], "error: --list='nothing' is not one of: all, model"),
    (["--dataset=folder", "--data_dir=/no/such"], "is not a directory"),
    (["--dataset=synthetic", "--strategy=mirrored", "--cpu_devices=2", "--batch_size=33"],
     "does not split over 2 replicas"),
    (["--batch_size=abc"], "error: flag --batch_size=abc: invalid literal"),
    (["--learnin_rate=0.1"], "error: Unknown command line flag 'learnin_rate'. Did you mean"),
    (["--flagfile=/no/such.flags"], "error: Unable to open flagfile"),
    (["--dataset=synthetic", "batch_size=32"], "error: unexpected arguments: batch_size=32"),
    (["--seed=-1"], "error: --seed must be >= 0"),
    (["--epochs=-1"], "--epochs must be > 0"),
    (["--learning_rate=inf"], "error: --learning_rate must be a finite number, got inf"),
    (["--model_dir=/proc/no/run", "--dataset=synthetic"], "cannot be created"),
    (["--image_size=100000", "--dataset=synthetic"], "error: --image_size=100000 with "
     "--batch_size=128: one float32 batch of its images alone takes at least 15.4 TB"),
])
def test_bad_flags_exit_non_zero_and_write_nothing(tmp_path, args, message):
  model_dir = tmp_path / "run"
  result = run("train.py", f"--model_dir={model_dir}", *args)
  assert result.returncode != 0
  assert message in result.stderr
  assert "Traceback" not in result.stderr
  assert not model_dir.exists()


def test_offline_cifar_is_one_quick_line(tmp_path, monkeypatch):
  # No cache, and the download host unreachable (a port nothing listens on).
  from research import startup  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(startup, "DOWNLOAD_HOST", ("127.0.0.1", 9))
  monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
  with pytest.raises(ConfigError, match=r"--dataset=cifar10 must be downloaded from "
                                        r"127.0.0.1.*--dataset=folder --data_dir=DIR"):
    startup.check_download("cifar10")
  os.makedirs(tmp_path / "keras" / "datasets" / "cifar-10-batches-py")
  startup.check_download("cifar10")  # Cached: nothing to download.


def test_help_lists_registered_names():
  result = run("train.py", "--help")
  assert result.returncode == 0, result.stderr[-2000:]
  text = " ".join(result.stdout.split())
  assert "--model: architecture name from the model registry. Registered: airbench, " \
         "airbench_noidentity" in text
  # The flags' defaults are not what most models train with, and the help says so.
  assert "Each --model has its own training defaults" in text
  assert "--optimizer: optimizer name from the optimizer registry. Registered: adam, " \
         "adamw, lamb, lion, muon, sgd. Default: the --model's own where it sets one " \
         "(--list=model)" in text
  listed = text.split("--list: ")[1].split(" --")[0]
  assert all(flag in listed for flag in plugins.registries()), listed


def test_short_help_exits_zero_too():
  result = run("train.py", "-h")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "Each --model has its own training defaults" in result.stdout


def _folder(root, size=16, per_class=6):
  rng = np.random.default_rng(1)
  for c, name in enumerate(["dark", "light"]):
    os.makedirs(root / name)
    for i in range(per_class):
      base = 40 if c == 0 else 200
      pixels = np.clip(rng.normal(base, 20, (size, size, 3)), 0, 255).astype(np.uint8)
      Image.fromarray(pixels).save(root / name / f"{i}.png")
  return root


def test_train_then_evaluate_a_folder_refusing_unknown_classes(tmp_path):
  data_dir, model_dir = _folder(tmp_path / "images"), tmp_path / "run"
  result = run("train.py", "--dataset=folder", f"--data_dir={data_dir}", "--val_split=0.25",
               "--image_size=16", "--model=resnet8", "--batch_size=4", "--train_steps=12",
               "--log_every=4", "--precision=float32", f"--model_dir={model_dir}",
               f"--cache_dir={tmp_path / 'cache'}", "--optimizer=adam",
               "--learning_rate=0.01", "--hooks=none")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "eval at step 12: 4 validation examples" in result.stderr
  config = json.load(open(model_dir / "config.json"))
  assert config["train_steps"] == 12 and config["num_classes"] == 2
  # resnet8's training defaults filled what no flag set, and both places say which.
  assert "--model=resnet8 trains with its defaults where no flag is set: --augment=" \
      in result.stderr
  assert "--schedule=cosine" in config["model_defaults"]
  assert "--optimizer" not in config["model_defaults"] and config["optimizer"] == "adam"
  assert "--epochs" not in config["model_defaults"]  # --train_steps set the length.
  # Its momentum and decay were tuned for SGD, and the console says so.
  assert "which --model=resnet8 tuned for --optimizer=sgd" in result.stderr

  scored = run("scripts/evaluate.py", f"--model_dir={model_dir}", f"--data_dir={data_dir}",
               f"--cache_dir={tmp_path / 'cache'}")
  assert scored.returncode == 0, scored.stderr[-2000:]
  last = json.loads(scored.stdout.strip().splitlines()[-1])
  assert last["examples"] == 12 and last["split"] == "all"
  assert 0.0 <= last["accuracy"] <= 1.0
  # Two trivially separable classes: a trained model beats chance.
  assert last["accuracy"] > 0.5

  # The run's own validation split of its own folder, with other TTA and raw weights.
  held_out = run("scripts/evaluate.py", f"--model_dir={model_dir}",
                 f"--cache_dir={tmp_path / 'cache'}", "--split=validation", "--tta=flip",
                 "--weights=checkpoint")
  assert held_out.returncode == 0, held_out.stderr[-2000:]
  held_out_json = json.loads(held_out.stdout.strip().splitlines()[-1])
  assert held_out_json["examples"] == 4 and held_out_json["split"] == "validation"
  assert f"on 4 images of the validation split of {data_dir}" in held_out.stdout

  # A folder with a class the model never saw is refused, by name.
  other = _folder(tmp_path / "other")
  os.rename(other / "light", other / "purple")
  scored = run("scripts/evaluate.py", f"--model_dir={model_dir}", f"--data_dir={other}",
               f"--cache_dir={tmp_path / 'cache'}")
  assert scored.returncode != 0 and "classes not known to the model: purple" in scored.stderr


def test_the_fast_recipe_hides_startup_noise_and_evaluate_loads_its_custom_layers(tmp_path):
  """airbench trained 2 steps on a folder under MirroredStrategy on 2 CPU devices, with
  TF_CPP_MIN_LOG_LEVEL unset as a user's shell leaves it: TensorFlow's start-up noise stays
  hidden, and its model.keras, which holds custom layers (patch whitening), loads in
  evaluate. One test for both: as a module fixture, the run was trained on every xdist
  worker that ran one of two tests."""
  data_dir = _folder(tmp_path / "images", size=32)
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  trained = subprocess.run([sys.executable, "train.py", "--dataset=folder",
                            f"--data_dir={data_dir}", "--val_split=0.25", "--model=airbench",
                            "--batch_size=4", "--train_steps=2", "--ema_decay=0.9",
                            "--tta=flip_translate", "--hooks=none", "--strategy=mirrored",
                            "--cpu_devices=2", f"--model_dir={tmp_path / 'run'}",
                            f"--cache_dir={tmp_path / 'cache'}"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
  assert trained.returncode == 0, trained.stderr[-2000:]
  for noise in ("cuInit", "Reduce to", "Sharding callback", "absl::InitializeLog"):
    assert noise not in trained.stderr

  scored = run("scripts/evaluate.py", f"--model_dir={tmp_path / 'run'}",
               f"--data_dir={data_dir}", f"--cache_dir={tmp_path / 'cache'}")
  assert scored.returncode == 0, scored.stderr[-2000:]
  assert json.loads(scored.stdout.strip().splitlines()[-1])["examples"] == 12


def test_script_errors_are_one_line_without_tensorflows_start_up_noise(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  for args in (["evaluate.py", "--model_dir=/no/run", "--data_dir=/no/images"],
               ["evaluate.py", f"--model_dir={tmp_path}"],  # No folder to score.
               ["export.py", "--model_dir=/no/run", "--format=keras", "--output=/tmp/x.keras",
                "stray"],
               ["plot_run.py", "/no/run"],
               ["plot_run.py"],  # No run named.
               ["plot_run.py", "--weights=raw", "/no/run"],  # absl's error, in one line.
               ["predict.py", "--model=/no/run", "--weights=checkpoint", "image.png"]):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", args[0]),
                             *args[1:]], cwd=ROOT, capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: ")


def test_json_lines_are_valid_json_with_non_finite_numbers_as_null(capsys):
  from scripts import cli  # pylint: disable=g-import-not-at-top
  line = cli.json_line({"accuracy": float("nan"), "top": [["cat", float("inf")], ["dog", 1.0]],
                        "examples": 3})
  assert json.loads(line) == {"accuracy": None, "top": [["cat", None], ["dog", 1.0]],
                              "examples": 3}
  assert capsys.readouterr().err.splitlines() == [
      "warning: accuracy is nan, written as null", "warning: top[0][1] is inf, written as null"]


def test_a_scripts_help_exits_0():
  result = run("scripts/plot_run.py", "--help")
  assert result.returncode == 0 and "--weights: <model|checkpoint|final>" in result.stdout
