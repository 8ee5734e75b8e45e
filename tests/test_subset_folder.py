"""scripts/subset_folder.py: the same disjoint picks every time, as links."""

import os

import pytest

from scripts import subset_folder


def _source(root):
  for name in ("cat", "dog", "frog"):
    os.makedirs(root / name)
    for i in range(5):
      (root / name / f"{i:04d}.jpg").write_bytes(bytes([i]))
  return root


def test_skip_and_count_pick_disjoint_files_of_the_chosen_classes(tmp_path):
  source = _source(tmp_path / "all")
  assert subset_folder.subset(source, tmp_path / "train", ["dog", "cat"], count=2) == 4
  assert subset_folder.subset(source, tmp_path / "test", ["dog", "cat"], skip=2) == 6
  assert sorted(os.listdir(tmp_path / "train")) == ["cat", "dog"]
  assert sorted(os.listdir(tmp_path / "train" / "dog")) == ["0000.jpg", "0001.jpg"]
  assert sorted(os.listdir(tmp_path / "test" / "dog")) == ["0002.jpg", "0003.jpg", "0004.jpg"]
  assert os.path.islink(tmp_path / "test" / "dog" / "0004.jpg")
  assert (tmp_path / "test" / "dog" / "0004.jpg").read_bytes() == bytes([4])


@pytest.mark.parametrize("classes, skip, message", [
    (["bird"], 0, "no class folder bird"),
    (["cat"], 5, "no images left after --skip=5"),
])
def test_bad_picks_are_refused(classes, skip, message, tmp_path):
  with pytest.raises(ValueError, match=message):
    subset_folder.subset(_source(tmp_path / "all"), tmp_path / "out", classes, skip=skip)


def test_a_non_empty_output_is_kept(tmp_path):
  out = tmp_path / "out"
  out.mkdir()
  (out / "mine.txt").write_text("keep")
  with pytest.raises(ValueError, match="exists and is not empty"):
    subset_folder.subset(_source(tmp_path / "all"), out, ["cat"])
  assert (out / "mine.txt").read_text() == "keep"


def test_only_the_images_training_reads_are_picked_and_a_refusal_makes_nothing(tmp_path):
  source = _source(tmp_path / "all")
  (source / "cat" / "notes.txt").write_text("not an image")
  os.makedirs(source / "cat" / "more")
  (source / "cat" / "more" / "0000.jpg").write_bytes(b"x")  # The same name, nested.
  os.makedirs(source / ".ipynb_checkpoints")  # Not a class.
  assert subset_folder.subset(source, tmp_path / "out", [], skip=1, count=5) == 13
  assert sorted(os.listdir(tmp_path / "out")) == ["cat", "dog", "frog"]
  assert sorted(os.listdir(tmp_path / "out" / "cat")) == [
      "0001.jpg", "0002.jpg", "0003.jpg", "0004.jpg", "more"]
  assert os.listdir(tmp_path / "out" / "cat" / "more") == ["0000.jpg"]
  # --skip=5 leaves cat its nested image and dog none: refused before anything is made.
  with pytest.raises(ValueError, match="dog has no images left after --skip=5"):
    subset_folder.subset(source, tmp_path / "none", [], skip=5)
  assert not os.path.exists(tmp_path / "none")
