"""One run per model dir, usable dirs only, config changes refused, whole files."""

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from research import evaluation, files, loop, model_dir
from research.sources import DataError
from research.config import ConfigError
from tests.conftest import ROOT, tiny_config

HOLD = """
import sys, time
sys.path.insert(0, {root!r})
from research import model_dir
with model_dir.Lock({path!r}):
  print("held", flush=True)
  time.sleep(120)
"""


def hold_lock(path):
  """A process holding the lock of `path` until killed."""
  proc = subprocess.Popen([sys.executable, "-c", HOLD.format(root=ROOT, path=str(path))],
                          stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline() == "held\n"
  return proc


def test_a_held_dir_is_refused_naming_the_holder_then_taken_over_once_it_dies(tmp_path,
                                                                               caplog):
  holder = hold_lock(tmp_path)
  try:
    with pytest.raises(ConfigError, match=rf"in use by pid {holder.pid} on "):
      with model_dir.Lock(str(tmp_path)):
        pass
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  with model_dir.Lock(str(tmp_path)):  # The dead holder's file is still there.
    assert f"taking over the lock of pid {holder.pid}" in caplog.text
    with pytest.raises(ConfigError, match=f"in use by pid {os.getpid()}"):
      with model_dir.Lock(str(tmp_path)):
        pass
  with model_dir.Lock(str(tmp_path)):  # Released on exit.
    pass


def test_training_on_a_held_dir_stops_before_reading_data(make_config, tmp_path):
  config = make_config(dataset="folder", data_dir=str(tmp_path))  # No images: never read.
  with model_dir.Lock(config.model_dir):
    with pytest.raises(ConfigError, match="is in use by pid"):
      loop.train(config)
  assert os.listdir(config.model_dir) == [model_dir.LOCK_FILE]


def test_unusable_model_dirs_are_one_line(tmp_path):
  (tmp_path / "file").write_text("")
  with pytest.raises(ConfigError, match="is a file, not a directory"):
    model_dir.prepare(str(tmp_path / "file"))
  with pytest.raises(ConfigError, match="cannot be created"):
    model_dir.prepare("/proc/no/run")


def test_resuming_with_another_experiment_is_refused_unless_allowed(make_config, caplog):
  config = make_config(train_steps=3, checkpoint_every=3, schedule="cosine")
  loop.train(config)
  with pytest.raises(ConfigError, match=r"batch_size: 32 in the model dir, 16 now.*"
                                        r"--allow_config_change"):
    loop.train(config.replace(batch_size=16, train_steps=6))
  # A longer run is not another experiment; a new batch size is, once allowed.
  with caplog.at_level(logging.INFO):
    loop.train(config.replace(train_steps=6))
  assert "train_steps: 3 in the model dir, 6 now" in caplog.text
  # The cosine schedule ended at 0 at step 3 of 3; at step 3 of 6 it is half the peak.
  assert re.search(r"--train_steps 3 -> 6: the cosine schedule decays over the whole run, "
                   r"so its learning rate jumps from 0 to 0\.025 here", caplog.text)
  loop.train(config.replace(batch_size=16, train_steps=9, allow_config_change=True))
  with open(os.path.join(config.model_dir, model_dir.HISTORY_FILE)) as f:
    history = [json.loads(line) for line in f]
  assert [(e["step"], e["config"]["batch_size"]) for e in history] == [
      (0, 32), (3, 32), (6, 16)]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """The config of a finished tiny run (6 steps), trained once for the tests below."""
  config = tiny_config(tmp_path_factory.mktemp("finished"))
  loop.train(config)
  return config


@pytest.fixture
def finished_copy(finished_run, tmp_path):
  """The config of this test's own copy of `finished_run`."""
  config = finished_run.replace(model_dir=str(tmp_path / "finished"))
  shutil.copytree(finished_run.model_dir, config.model_dir)
  return config


def test_rerunning_a_finished_run_says_so(finished_copy, caplog):
  with caplog.at_level(logging.INFO):
    assert loop.train(finished_copy).step == 6
  assert "the run is already finished (step 6 of 6)" in caplog.text


def test_the_same_data_dir_by_another_path_is_the_same_experiment(make_config, tmp_path,
                                                                    monkeypatch):
  """A run recorded before paths were made absolute kept --data_dir as typed: resuming
  from where it started, with the absolute path, is no change; another folder is."""
  (tmp_path / "images").mkdir()
  (tmp_path / "other").mkdir()
  monkeypatch.chdir(tmp_path)
  config = make_config(dataset="folder", data_dir="images")
  os.makedirs(config.model_dir)
  config.save(os.path.join(config.model_dir, "config.json"))
  assert model_dir.check_config(config.replace(data_dir=str(tmp_path / "images"))) == []
  assert model_dir.check_config(config.replace(data_dir=str(tmp_path / "images") + "/")) == []
  with pytest.raises(ConfigError, match=r"data_dir: 'images' in the model dir, '.*other' now"):
    model_dir.check_config(config.replace(data_dir=str(tmp_path / "other")))


def test_resuming_from_a_folder_that_gained_or_lost_files_is_refused_unless_allowed(
    make_config, tmp_path, caplog):
  from tests.test_data import make_folder  # pylint: disable=g-import-not-at-top
  root = make_folder(tmp_path / "images", per_class=4)
  config = make_config(dataset="folder", data_dir=str(root), batch_size=4, train_steps=2,
                       checkpoint_every=2, eval_every=2, cache_dir=str(tmp_path / "cache"))
  loop.train(config)
  with open(os.path.join(config.model_dir, model_dir.LISTING_FILE)) as f:
    assert json.load(f)["classes"] == {"ant": 4, "bee": 4, "cat": 4}
  os.rename(root / "cat" / "0.jpg", root / "cat" / "new.jpg")  # One added, one removed.
  with pytest.raises(DataError, match=r"1 file\(s\) added and 1 removed of 12 .*: the "
                                      r"run's held-out split cannot be drawn from it again"):
    evaluation.score_folder(config.model_dir, "", cache_dir=str(tmp_path / "cache"),
                            split="validation")
  longer = config.replace(train_steps=4)
  with pytest.raises(ConfigError, match=re.escape(
      f"--data_dir {str(root)!r} has changed since this model dir's run started: 1 file(s) "
      "added and 1 removed of 12 (cat/new.jpg added, cat/0.jpg removed). The validation "
      "split and the data order would be drawn again") + ".*--allow_data_change"):
    loop.train(longer)
  with caplog.at_level(logging.WARNING):
    assert loop.train(longer.replace(allow_data_change=True)).step == 4
  assert "going on with the new listing (--allow_data_change)" in caplog.text
  assert loop.train(longer.replace(train_steps=5)).step == 5  # The new listing is kept.


def test_a_failed_write_leaves_the_previous_file(tmp_path):
  path = str(tmp_path / "classes.json")
  files.write_json(path, ["a", "b"])
  with pytest.raises(RuntimeError):
    with files.replacing(path) as tmp:
      with open(tmp, "w") as f:
        f.write("[\"a\", ")
      raise RuntimeError("killed mid-write")
  with open(path) as f:
    assert json.load(f) == ["a", "b"]
  assert os.listdir(tmp_path) == ["classes.json"]


def test_evaluation_says_what_is_wrong_with_a_run_and_scores_checkpoints_without_a_model(
    finished_copy, tmp_path):
  from research import data, evaluation  # pylint: disable=g-import-not-at-top
  with pytest.raises(data.DataError, match="does not exist"):
    evaluation.load_run(str(tmp_path / "nope"))
  config = finished_copy
  final = evaluation.load_run(config.model_dir)[2].get_weights()
  path = os.path.join(config.model_dir, "model.keras")
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)
  with pytest.raises(data.DataError, match=r"model.keras is damaged .*--weights=checkpoint"):
    evaluation.load_run(config.model_dir)
  os.remove(path)
  with pytest.raises(data.DataError, match="has no model.keras: the run has not finished"):
    evaluation.load_run(config.model_dir)
  restored = evaluation.load_run(config.model_dir, weights="checkpoint")[2].get_weights()
  for a, b in zip(final, restored):  # No weight averaging: the final checkpoint's weights.
    np.testing.assert_array_equal(a, b)
