import logging
import os
import shutil

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from research import data
from research.config import Config
from research.sources import cache
from research.sources.cache import load_folder
from research.sources.datasets import synthetic
from research.sources.folder import list_folder
from research.sources.memory import Arrays


def make_folder(root, per_class=3):
  """Class folders of mixed formats, sizes and modes, plus a stray non-image file."""
  rng = np.random.default_rng(0)
  kinds = [("RGB", ".jpg", (40, 30)), ("L", ".png", (32, 32)), ("RGBA", ".png", (20, 50)),
           ("RGB", ".bmp", (32, 32)), ("P", ".gif", (16, 16)), ("CMYK", ".jpg", (33, 33))]
  for c, name in enumerate(["cat", "ant", "bee"]):  # Not sorted on purpose.
    os.makedirs(root / name)
    for i in range(per_class):
      mode, ext, size = kinds[(c * per_class + i) % len(kinds)]
      pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
      Image.fromarray(pixels).convert(mode).save(root / name / f"{i}{ext}")
  (root / "cat" / "notes.txt").write_text("not an image")
  return root


def test_folder_of_mixed_images(tmp_path):
  root = make_folder(tmp_path / "images")
  split, names = load_folder(str(root), 24, cache_dir=str(tmp_path / "cache"))
  assert names == ["ant", "bee", "cat"]
  assert split.images.shape == (9, 24, 24, 3) and split.images.dtype == np.uint8
  np.testing.assert_array_equal(split.labels, [0, 0, 0, 1, 1, 1, 2, 2, 2])


def test_folder_is_decoded_once_then_cached(tmp_path, monkeypatch):
  root = make_folder(tmp_path / "images")
  first, _ = load_folder(str(root), 16, cache_dir=str(tmp_path / "cache"))
  assert len(os.listdir(tmp_path / "cache")) == 1

  def no_decoding(*args):
    raise AssertionError("decoded again")

  monkeypatch.setattr(cache, "decode_images", no_decoding)
  again, _ = load_folder(str(root), 16, cache_dir=str(tmp_path / "cache"))
  np.testing.assert_array_equal(first.images, again.images)


def test_hidden_files_and_folders_are_not_data(tmp_path):
  root = make_folder(tmp_path / "images")
  pixels = np.zeros((8, 8, 3), np.uint8)
  for copy in ("cat/.ipynb_checkpoints/0-checkpoint.png", "ant/.@__thumb/s100_0.png",
               "__MACOSX/cat/0.png"):  # Jupyter's copies, a NAS's thumbnails, a macOS zip.
    os.makedirs(root / os.path.dirname(copy), exist_ok=True)
    Image.fromarray(pixels).save(root / copy)
  (root / "cat" / "._0.jpg").write_bytes(b"\x00\x05\x16\x07" + bytes(80))  # AppleDouble.
  paths, labels, names = list_folder(str(root))
  assert names == ["ant", "bee", "cat"] and len(paths) == len(labels) == 9
  assert not any(part.startswith(".") for p in paths for part in p.split(os.sep)[-2:])
  split, _ = load_folder(str(root), 16, cache_dir=str(tmp_path / "cache"))
  assert len(split.labels) == 9


def test_linked_folders_are_read_once_and_links_up_the_tree_do_not_loop(tmp_path):
  root = make_folder(tmp_path / "images")
  more = make_folder(tmp_path / "more")
  os.symlink(more / "cat", root / "cat" / "more")  # scripts/subset_folder.py makes these.
  os.symlink(root / "cat", root / "cat" / "more_again")  # Back up: read once, no loop.
  paths, labels, _ = list_folder(str(root))
  assert len(paths) == 12 and list(labels).count(2) == 6
  assert sum("/cat/more/" in p for p in paths) == 3


def test_files_of_other_types_are_counted_in_one_warning(tmp_path, caplog):
  root = make_folder(tmp_path / "images")
  for name in ("0.tif", "1.TIF", "README"):
    (root / "ant" / name).write_bytes(b"II*\x00")
  with caplog.at_level(logging.WARNING):
    paths, _, _ = list_folder(str(root))
  assert len(paths) == 9
  assert "ignored 4 files of unsupported types (.tif: 2, (no extension): 1, .txt: 1)" in (
      caplog.text)


def test_a_link_to_another_class_counts_its_images_once_under_their_own_class(tmp_path,
                                                                              caplog):
  root = make_folder(tmp_path / "images")
  os.symlink("..", root / "ant" / "loop")  # ant/loop/bee/0.bmp is bee's 0.bmp.
  os.symlink("../cat/0.jpg", root / "bee" / "same.jpg")  # A file linked into another class.
  with caplog.at_level(logging.WARNING):
    paths, labels, names = list_folder(str(root))
  assert len(paths) == 9 and list(labels) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
  assert not any("loop" in p or "same" in p for p in paths)
  assert ("links lead to images listed already; each is read once, under the class folder "
          "that holds it: 8 file path(s) and 1 linked folder(s) left out") in caplog.text
  assert "(ant/loop/bee/0.jpg is bee/0.jpg; " in caplog.text
  assert "ignored 1 files of unsupported types (.txt: 1)" in caplog.text  # cat/notes.txt.


def test_a_file_name_that_is_not_utf8_is_named(tmp_path):
  root = make_folder(tmp_path / "images")
  latin1 = os.path.join(os.fsencode(root / "bee"), b"caf\xe9.jpg")  # As unzip leaves it.
  os.rename(os.fsencode(root / "bee" / "0.jpg"), latin1)
  with pytest.raises(data.DataError, match=r"1 file name\(s\) in .* are not UTF-8: "
                                           r".*caf\\udce9\.jpg.*rename them"):
    list_folder(str(root))


def test_a_broken_link_is_named_like_an_unreadable_image(tmp_path):
  root = make_folder(tmp_path / "images")
  os.symlink(tmp_path / "moved_away.jpg", root / "bee" / "link.jpg")
  with pytest.raises(data.DataError, match="1 image file.*link.jpg"):
    load_folder(str(root), 16, cache_dir=str(tmp_path / "cache"))
  split, _ = load_folder(str(root), 16, cache_dir=str(tmp_path / "cache"),
                              skip_bad_images=True)
  assert len(split.labels) == 9


def test_a_cache_that_cannot_be_written_is_a_warning(tmp_path, caplog):
  root = make_folder(tmp_path / "images")
  (tmp_path / "cache").write_text("a file where the cache dir would be")
  with caplog.at_level(logging.WARNING):
    split, _ = load_folder(str(root), 16, cache_dir=str(tmp_path / "cache"))
  assert len(split.labels) == 9
  assert "could not cache the decoded images" in caplog.text


def test_corrupt_image_is_named(tmp_path):
  root = make_folder(tmp_path / "images")
  (root / "bee" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
  with pytest.raises(data.DataError, match="1 image file.*broken.jpg"):
    load_folder(str(root), 16, cache_dir=str(tmp_path / "cache"))


def test_missing_or_empty_folders_are_refused(tmp_path):
  with pytest.raises(data.DataError, match="does not exist"):
    list_folder(str(tmp_path / "nope"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(data.DataError, match="no class subfolders"):
    list_folder(str(tmp_path / "empty"))
  root = make_folder(tmp_path / "images")
  (root / "wasp").mkdir()
  with pytest.raises(data.DataError, match="without images.*wasp"):
    list_folder(str(root))


def test_a_single_class_is_refused_for_training(tmp_path):
  root = make_folder(tmp_path / "images")
  for name in ("ant", "bee"):
    for path in (root / name).iterdir():
      path.unlink()
    (root / name).rmdir()
  config = Config(dataset="folder", data_dir=str(root), cache_dir=str(tmp_path / "cache"))
  with pytest.raises(data.DataError, match=r"has 1 class \(cat\): a classifier needs at "
                                           "least 2"):
    data.load(config)


def test_a_folder_trains_whole_and_evaluates_on_another_or_not_at_all(tmp_path,
                                                                       make_config, caplog):
  from research import loop  # pylint: disable=g-import-not-at-top
  root = make_folder(tmp_path / "images", per_class=4)
  other = make_folder(tmp_path / "other", per_class=2)
  shutil.rmtree(other / "ant")  # Some of the classes: labelled as training labels them.
  config = make_config(dataset="folder", data_dir=str(root), val_split=0.0,
                       eval_data_dir=str(other), cache_dir=str(tmp_path / "cache"),
                       batch_size=4, train_steps=3, eval_every=3, checkpoint_every=3)
  split = data.load(config)
  assert (len(split.train), len(split.eval), split.eval_name) == (12, 4, "eval folder")
  np.testing.assert_array_equal(split.eval.labels, [1, 1, 2, 2])  # bee, cat
  assert loop.train(config).final_eval["examples"] == 4
  with caplog.at_level(logging.INFO):
    result = loop.train(config.replace(eval_data_dir="", model_dir=config.model_dir + "2"))
  assert result.eval_history == [] and "no evaluation: --val_split=0" in caplog.text
  assert os.path.exists(os.path.join(config.model_dir + "2", "model.keras"))
  (other / "wasp").mkdir()
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(other / "wasp" / "0.png")
  with pytest.raises(data.DataError, match="has classes the training data does not: wasp"):
    data.load(config)


def test_validation_split_is_stratified_disjoint_and_fixed():
  split, _ = synthetic(1000, 8, 10, seed=3)
  split.images[:, 0, 0, 0] = np.arange(1000) % 256  # Tag examples to trace them.
  split.images[:, 0, 1, 0] = np.arange(1000) // 256
  train, val = data.split_validation(split, 0.2)
  again_train, again_val = data.split_validation(split, 0.2)
  np.testing.assert_array_equal(val.images, again_val.images)
  ids = lambda s: set(s.images[:, 0, 0, 0].astype(int) + 256 * s.images[:, 0, 1, 0].astype(int))
  assert not ids(train) & ids(val) and len(ids(train) | ids(val)) == 1000
  for label in range(10):
    total = np.sum(split.labels == label)
    assert abs(np.sum(val.labels == label) - 0.2 * total) <= 1


def test_offline_cifar_names_the_folder_way_out(monkeypatch):
  import keras

  def offline():
    raise OSError("network is unreachable")

  monkeypatch.setattr(keras.datasets.cifar10, "load_data", offline)
  with pytest.raises(data.DataError, match="--dataset=folder --data_dir=DIR"):
    data.load(Config(dataset="cifar10"))


def _batches(split, config, start):
  ds = data.train_dataset(split, config, start, None)
  return [(b["image"].numpy(), b["label"].numpy()) for b in ds]


def test_train_batches_are_a_function_of_the_step():
  split, _ = synthetic(100, 8, 4)
  config = Config(batch_size=16, train_steps=20, augment="crop,flip,mixup", seed=5,
                  num_classes=4)
  full = _batches(split, config, 0)
  assert len(full) == 20 and full[0][0].shape == (16, 8, 8, 3)
  for start in (7, 6, 12):  # Inside an epoch and at epoch boundaries (6 steps/epoch).
    resumed = _batches(split, config, start)
    for (x, y), (fx, fy) in zip(resumed, full[start:]):
      np.testing.assert_array_equal(x, fx)
      np.testing.assert_array_equal(y, fy)
  other_seed = _batches(split, config.replace(seed=6), 0)
  assert not np.array_equal(other_seed[0][1], full[0][1])


def test_each_epoch_visits_each_example_at_most_once():
  split, _ = synthetic(64, 8, 4)
  split.images[:, 0, 0, 0] = np.arange(64)
  config = Config(batch_size=10, train_steps=12, augment="", seed=0, num_classes=4)
  batches = _batches(split, config, 0)
  for epoch in range(2):
    seen = np.concatenate([x[:, 0, 0, 0] for x, _ in batches[epoch * 6:(epoch + 1) * 6]])
    assert len(set(seen)) == 60


@pytest.mark.parametrize("batch", [10, 7, 128])
def test_eval_covers_every_example_once(batch):
  split, _ = synthetic(50, 8, 4)
  ds = data.eval_dataset(split, batch, 4, None)
  masks = [b["mask"].numpy() for b in ds]
  assert len(masks) == data.eval_steps(50, batch)
  assert sum(m.sum() for m in masks) == 50
  assert all(len(m) == batch for m in masks)


def test_per_replica_slicing():
  ctx = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0,
                                   num_replicas_in_sync=2)
  split, _ = synthetic(40, 8, 4)
  config = Config(batch_size=8, train_steps=2, augment="mixup", num_classes=4)
  per_replica = list(data.train_dataset(split, config, 0, ctx))
  whole = list(data.train_dataset(split, config, 0, None))
  assert len(per_replica) == 4 and per_replica[0]["image"].shape == (4, 8, 8, 3)
  for key in ("image", "label", "target", "index"):
    np.testing.assert_array_equal(
        np.concatenate([per_replica[0][key], per_replica[1][key]]), whole[0][key])


def test_arrays_are_resized_in_chunks_as_they_would_be_whole():
  split, _ = synthetic(10, 16, 3)
  whole = data._resize_split(split, 24, chunk=len(split.images))  # pylint: disable=protected-access
  chunked = data._resize_split(split, 24, chunk=3)  # pylint: disable=protected-access
  assert chunked.images.shape == (10, 24, 24, 3) and chunked.images.dtype == np.uint8
  np.testing.assert_array_equal(chunked.images, whole.images)
  np.testing.assert_array_equal(chunked.labels, split.labels)


@pytest.mark.parametrize("fraction, empty", [(0.1, "validation"), (0.999, "training")])
def test_a_val_split_too_small_or_large_for_the_classes_says_what_would_work(fraction, empty):
  labels = np.repeat(np.arange(3000), 2).astype(np.int32)  # 3,000 classes of 2 images.
  split = Arrays(np.zeros((6000, 1, 1, 3), np.uint8), labels)
  names = [f"class_{i:04d}" for i in range(3000)]
  with pytest.raises(data.DataError, match=(
      rf"--val_split={fraction} leaves an empty {empty} set of 6000 examples: .* the 3000 "
      r"classes class_0000, class_0001, class_0002 and 2997 more are too small for it \(2 "
      r"examples each\); a --val_split above 0.25 and below 0.75 holds out")):
    data.split_validation(split, fraction, names)
  train, val = data.split_validation(split, 0.5, names)
  assert len(train) == len(val) == 3000


def test_a_class_held_out_whole_is_named(caplog):
  split = Arrays(np.zeros((5, 1, 1, 3), np.uint8), np.array([0, 0, 0, 0, 1], np.int32))
  with caplog.at_level(logging.WARNING):
    train, _ = data.split_validation(split, 0.6, ["ant", "bee"])
  assert list(train.labels) == [0, 0]
  assert "--val_split=0.6 holds out every example of class bee: training sees none" in (
      caplog.text)


def test_what_a_folder_cannot_hold_is_said(tmp_path, caplog, monkeypatch):
  root = make_folder(tmp_path / "images")
  with pytest.raises(data.DataError, match="is a file, not a folder of class subfolders"):
    list_folder(str(root / "cat" / "0.jpg"))
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "stray.png")
  with caplog.at_level(logging.WARNING):
    assert len(list_folder(str(root))[0]) == 9
  assert "ignored 1 image(s) in no class folder (stray.png)" in caplog.text
  os.symlink(tmp_path / "unmounted" / "dog", root / "dog")  # A class that would be lost.
  with pytest.raises(data.DataError, match=r"1 link\(s\) in .* lead to nothing: dog -> "
                                           r".*unmounted/dog; point them"):
    list_folder(str(root))
  os.remove(root / "dog")
  scandir = os.scandir

  def denied(path):  # As for a folder of another user's (the tests may run as root).
    if str(path).endswith("bee"):
      raise PermissionError(13, "Permission denied", str(path))
    return scandir(path)

  monkeypatch.setattr(os, "scandir", denied)
  with pytest.raises(data.DataError, match=r"cannot list the folder '.*bee' \(Permission "
                                           r"denied\); make it readable"):
    list_folder(str(root))
