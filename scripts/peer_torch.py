"""The PyTorch side of scripts/peer_benchmark.py: one network's training step, timed.

Run by the python of a PyTorch environment (torch is not a dependency of this project),
as a subprocess that stays up for the whole comparison:

  python scripts/peer_torch.py --network=airbench --batch_size=1024 --steps=3 --threads=2

It builds the network as research/models/ builds it (same layers, widths, strides,
BatchNorm momentum and epsilon), float32 in channels_last memory format, with
Nesterov SGD on a label-smoothed cross-entropy, and random images already in memory.
It prints one JSON line {"ready": ..., "torch": version, "threads", "trainable"}, then
for each line "window" read from stdin runs `--steps` training steps and prints
{"seconds": ...}; it exits at the end of stdin. The first window is the warmup: the
caller does not count it. Only torch and the standard library are imported here.
"""

import argparse
import json
import sys
import time

import torch
from torch import nn
import torch.nn.functional as F

NUM_CLASSES = 10
# research/models/registry.py's CIFAR-10 mean and standard deviation, in 0..255.
CIFAR_MEAN = (125.3, 123.0, 113.9)
CIFAR_STD = (63.0, 62.1, 66.7)


class Standardize(nn.Module):
  """Per-channel (x - mean) / std, as our models' first layer does."""

  def __init__(self):
    super().__init__()
    self.register_buffer("mean", torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1))
    self.register_buffer("std", torch.tensor(CIFAR_STD).view(1, 3, 1, 1))

  def forward(self, x):
    return (x - self.mean) / self.std


def batchnorm(width, momentum, eps, scale=True):
  """BatchNorm2d; `momentum` is Keras' (the share of the old running value kept)."""
  norm = nn.BatchNorm2d(width, eps=eps, momentum=1 - momentum)
  norm.weight.requires_grad_(scale)  # airbench shifts only: its scale stays 1.
  return norm


# --- airbench94's network (research/models/airbench.py) ----------------------------


def conv_group(cin, width):
  """conv3x3 -> maxpool2 -> BatchNorm -> GELU -> conv3x3 -> BatchNorm -> GELU."""
  return nn.Sequential(
      nn.Conv2d(cin, width, 3, padding=1, bias=False), nn.MaxPool2d(2),
      batchnorm(width, 0.6, 1e-5, scale=False), nn.GELU(),
      nn.Conv2d(width, width, 3, padding=1, bias=False),
      batchnorm(width, 0.6, 1e-5, scale=False), nn.GELU())


class Airbench(nn.Module):
  """2x2 patch conv 3->24 (fixed kernel, trained bias) + GELU, three conv groups,
  global max pool, bias-free linear head times 1/9."""

  def __init__(self, widths=(64, 256, 256)):
    super().__init__()
    self.standardize = Standardize()
    self.whiten = nn.Conv2d(3, 24, 2)
    self.whiten.weight.requires_grad_(False)
    groups, cin = [], 24
    for width in widths:
      groups.append(conv_group(cin, width))
      cin = width
    self.groups = nn.Sequential(*groups)
    self.head = nn.Linear(cin, NUM_CLASSES, bias=False)

  def forward(self, x):
    x = self.groups(F.gelu(self.whiten(self.standardize(x))))
    return self.head(torch.amax(x, dim=(2, 3))) / 9


# --- the CIFAR ResNet (research/models/resnet.py) ----------------------------------


def conv_bn(cin, cout, kernel, stride):
  return nn.Sequential(
      nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
      batchnorm(cout, 0.9, 1e-3))


class Block(nn.Module):
  """Basic block; a 1x1 conv + BatchNorm shortcut where the shape changes."""

  def __init__(self, cin, cout, stride):
    super().__init__()
    self.first = conv_bn(cin, cout, 3, stride)
    self.second = conv_bn(cout, cout, 3, 1)
    self.shortcut = (conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout
                     else nn.Identity())

  def forward(self, x):
    return F.relu(self.shortcut(x) + self.second(F.relu(self.first(x))))


class ResNet(nn.Module):
  """He et al.'s CIFAR ResNet: 3x3 stem of 16, three stages of (depth - 2) / 6 basic
  blocks of widths 16/32/64 (stride 2 at the second and third), average pool, linear."""

  def __init__(self, depth):
    super().__init__()
    blocks, cin, layers = (depth - 2) // 6, 16, []
    for stage, width in enumerate((16, 32, 64)):
      for i in range(blocks):
        layers.append(Block(cin, width, 2 if stage and i == 0 else 1))
        cin = width
    self.body = nn.Sequential(Standardize(), conv_bn(3, 16, 3, 1), nn.ReLU(), *layers)
    self.head = nn.Linear(cin, NUM_CLASSES)

  def forward(self, x):
    return self.head(self.body(x).mean(dim=(2, 3)))


NETWORKS = {"airbench": Airbench, "resnet20": lambda: ResNet(20)}


def trainable(model):
  return sum(p.numel() for p in model.parameters() if p.requires_grad)


def training_window(model, steps, batch_size, image_size, num_batches=4):
  """A call running `steps` training steps on in-memory random batches; returns seconds."""
  memory = torch.channels_last
  images = [torch.rand(batch_size, 3, image_size, image_size).mul(255)
            .contiguous(memory_format=memory) for _ in range(num_batches)]
  labels = [torch.randint(NUM_CLASSES, (batch_size,)) for _ in range(num_batches)]
  optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad],
                              lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
  model.train()
  count = [0]

  def window():
    began = time.perf_counter()
    for _ in range(steps):
      i = count[0] % num_batches
      count[0] += 1
      loss = F.cross_entropy(model(images[i]), labels[i], label_smoothing=0.2)
      optimizer.zero_grad(set_to_none=True)
      loss.backward()
      optimizer.step()
    return time.perf_counter() - began

  return window


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--network", choices=sorted(NETWORKS), required=True)
  parser.add_argument("--batch_size", type=int, required=True)
  parser.add_argument("--image_size", type=int, default=32)
  parser.add_argument("--steps", type=int, required=True, help="training steps a window")
  parser.add_argument("--threads", type=int, required=True, help="torch.set_num_threads")
  args = parser.parse_args()
  torch.manual_seed(0)
  torch.set_num_threads(args.threads)
  torch.set_flush_denormal(True)  # As TensorFlow's CPU threads do.
  model = NETWORKS[args.network]().to(memory_format=torch.channels_last)
  window = training_window(model, args.steps, args.batch_size, args.image_size)
  print(json.dumps({"ready": True, "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "trainable": trainable(model)}),
        flush=True)
  for line in sys.stdin:
    if line.strip() == "window":
      print(json.dumps({"seconds": window()}), flush=True)


if __name__ == "__main__":
  main()
