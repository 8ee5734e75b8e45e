"""research/ideas/subset.py, and the dataset registry a plugin adds to."""

import numpy as np
import pytest

from research import data, loop, plugins
from research.config import Config, ConfigError

SYNTHETIC = "synthetic(num_examples=200, num_classes=4)"


def _load(**values):
  return data.load(plugins.validate(Config(**values).validate()))


def test_keeps_per_class_examples_of_each_class_the_same_each_time():
  loaded = _load(dataset=f"subset(of={SYNTHETIC!r}, per_class=10)", val_split=0.5)
  labels = np.concatenate([loaded.train.labels, loaded.eval.labels])
  np.testing.assert_array_equal(np.bincount(labels), [10, 10, 10, 10])
  again = _load(dataset=f"subset(of={SYNTHETIC!r}, per_class=10)", val_split=0.5)
  np.testing.assert_array_equal(loaded.train.images, again.train.images)
  whole = _load(dataset=SYNTHETIC, val_split=0.5)
  assert len(whole.train) + len(whole.eval) == 200


@pytest.mark.parametrize("dataset, message", [
    ("subset(per_class=0)", "--dataset: subset: per_class must be >= 1, got 0"),
    ("subset(of='nope')", "--dataset: unknown dataset 'nope'"),
    ("subset(of='folder')", "--dataset: folder needs --data_dir=DIR"),
])
def test_bad_arguments_are_one_line_before_any_data(dataset, message):
  with pytest.raises(ConfigError) as error:
    plugins.validate(Config(dataset=dataset).validate())
  assert message in str(error.value)


def test_listed_and_trains_from_the_flag(make_config):
  assert "subset(of='cifar10', per_class=100)" in plugins.listing("dataset")
  config = make_config(dataset=f"subset(of={SYNTHETIC!r}, per_class=30)")
  assert np.isfinite(loop.train(config).train_history[-1][1]["loss"])


def test_a_plugin_file_adds_a_dataset(tmp_path):
  plugin = tmp_path / "checker.py"
  plugin.write_text(
      "import numpy as np\n"
      "from research.sources import DATASETS, Dataset\n"
      "from research.sources.memory import Arrays\n\n"
      "@DATASETS.register('checker')\n"
      "class Checker(Dataset):\n"
      "  has_test = False\n"
      "  def __init__(self, config, count=8):\n"
      "    super().__init__(config)\n"
      "    self.count = count\n"
      "  def open(self):\n"
      "    labels = np.arange(self.count, dtype=np.int32) % 2\n"
      "    images = np.zeros((self.count, 8, 8, 3), np.uint8) + 255 * labels[:, None, None, None]\n"
      "    return Arrays(images.astype(np.uint8), labels), None, ['dark', 'light']\n")
  loaded = _load(dataset="checker(count=20)", plugins=str(plugin), image_size=8)
  assert len(loaded.train) + len(loaded.eval) == 20 and loaded.class_names == ["dark", "light"]
