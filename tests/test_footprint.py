"""Images or batches too large for this machine's memory: one line, before anything is built."""

import pytest

from research import footprint, loop, models
from research.config import Config, ConfigError


def test_a_batch_that_cannot_fit_is_refused_before_anything_is_built(monkeypatch):
  monkeypatch.setattr(footprint, "available_memory", lambda: 10 ** 9)
  with pytest.raises(ConfigError, match=r"^--image_size=1000 with --batch_size=128: one "
                     r"float32 batch of its images alone takes at least 1.5 GB, more than "
                     r"the 1.0 GB of memory available; lower --batch_size \(at most 83 "):
    Config(image_size=1000, batch_size=128).validate()
  with pytest.raises(ConfigError, match=r"with --eval_batch_size=4096: .* lower --image_size$"):
    Config(image_size=100000, batch_size=1, eval_batch_size=4096).validate()
  Config(image_size=1000, batch_size=80).validate()  # 0.96 GB.


def test_activations_count_the_convolutions_outputs():
  config = Config(model="resnet8", image_size=16, num_classes=2, precision="float32")
  model = models.build(config)
  # resnet8: 16 channels at 16x16 (stem + 2 convs), then 32 at 8x8 and 64 at 4x4 (2 + a
  # 1x1 shortcut each).
  assert footprint.conv_outputs(model) == 3 * 16 * 256 + 3 * 32 * 64 + 3 * 64 * 16
  per_image = 4 * footprint.conv_outputs(model)
  assert footprint.activations_error(config, model, 10, available=10 * per_image) is None
  message = footprint.activations_error(config, model, 11, available=10 * per_image)
  assert message.startswith("--image_size=16 with --batch_size=11: the model's activations")
  assert message.endswith("lower --batch_size (at most 10 could fit) or --image_size")
  half = config.replace(precision="mixed_bfloat16")  # Activations in 2 bytes.
  assert footprint.activations_error(half, model, 20, available=10 * per_image) is None


def test_training_refuses_activations_that_cannot_fit(tmp_path, monkeypatch):
  # Room for the batch of images (98 KB), not for resnet8's activations for it.
  monkeypatch.setattr(footprint, "available_memory", lambda: 200_000)
  config = Config(dataset="synthetic", model="resnet8", image_size=16, batch_size=32,
                  precision="float32", model_dir=str(tmp_path / "run")).validate()
  with pytest.raises(ConfigError, match="the model's activations in a training step"):
    loop.train(config)
  assert not (tmp_path / "run").exists()  # Refused before the model dir or the data.


def test_size_text():
  assert [footprint.size_text(n) for n in (5e5, 2.29e10, 2.4e14)] == [
      "0.5 MB", "22.9 GB", "240.0 TB"]
