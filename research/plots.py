"""Matplotlib drawings shared by the TensorBoard hooks and scripts/plot_run.py.

Figures are built on the Agg canvas directly, never through pyplot, so drawing in a
training process touches no global backend or figure state.
"""

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 100            # PNG pixels per figure inch: sizes below are inches
CORRECT, WRONG = "tab:blue", "tab:red"  # the Keras tutorial's colours
CURVES_SIZE = (12, 4.5)  # the two-panel accuracy/loss figure
LINE_SIZE = (6, 4)       # one-panel figures: learning rate, throughput


def new_figure(width, height):
  """A Figure of `width` x `height` inches on its own Agg canvas."""
  figure = Figure(figsize=(width, height), dpi=DPI)
  FigureCanvasAgg(figure)
  return figure


def to_png(figure):
  """PNG bytes of `figure`, exactly figsize * DPI pixels (no tight cropping)."""
  buffer = io.BytesIO()
  figure.savefig(buffer, format="png", dpi=DPI)
  return buffer.getvalue()


def image_grid(images, cols, pad=2, scale=1):
  """Tiles [N,H,W,3] pixels in [0, 255] into one uint8 [rows*(H*scale+pad)-pad, ...] image.

  `scale` repeats pixels (nearest neighbour) so that 32px inputs stay visible.
  """
  images = np.clip(np.round(np.asarray(images, np.float32)), 0, 255).astype(np.uint8)
  if scale > 1:
    images = images.repeat(scale, axis=1).repeat(scale, axis=2)
  n, h, w, c = images.shape
  rows = -(-n // cols)
  grid = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad, c), 255, np.uint8)
  for i, image in enumerate(images):
    top, left = (i // cols) * (h + pad), (i % cols) * (w + pad)
    grid[top:top + h, left:left + w] = image
  return grid


def prediction_grid(images, labels, probabilities, class_names, cols=5, title=None):
  """The Keras CIFAR tutorial's grid: `predicted pp% (true)` under each image, mistakes red."""
  rows = max(1, -(-len(images) // cols))
  figure = new_figure(2 * cols, 2.2 * rows + (0.4 if title else 0))
  if title:
    figure.suptitle(title)
  if not len(images):
    figure.text(0.5, 0.5, "nothing to show", ha="center", va="center")
  for i, (image, label, probs) in enumerate(zip(images, labels, probabilities)):
    ax = figure.add_subplot(rows, cols, i + 1)
    ax.imshow(np.clip(image, 0, 255).astype(np.uint8))
    ax.set_xticks([])
    ax.set_yticks([])
    guess = int(np.argmax(probs))
    ax.set_xlabel(f"{class_names[guess]} {100 * probs[guess]:.0f}%\n({class_names[label]})",
                  color=CORRECT if guess == label else WRONG, fontsize=9)
  figure.tight_layout()
  return figure


def confusion_matrix(labels, predictions, num_classes):
  """[true, predicted] counts, int64 [num_classes, num_classes]."""
  matrix = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(matrix, (np.asarray(labels), np.asarray(predictions)), 1)
  return matrix


def confusion_figure(matrix, class_names):
  """Row-normalized confusion matrix; class names and counts only where they fit."""
  n = len(class_names)
  figure = new_figure(8, 7)
  ax = figure.add_subplot(1, 1, 1)
  rates = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
  shown = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
  figure.colorbar(shown, ax=ax, label="fraction of the true class")
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  ax.set_title(f"confusion matrix ({int(matrix.sum())} examples)")
  if n <= 20:
    ax.set_xticks(range(n), class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), class_names, fontsize=8)
  if n <= 12:
    for (i, j), count in np.ndenumerate(matrix):
      ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
              color="white" if rates[i, j] > 0.5 else "black")
  figure.tight_layout()
  return figure


def curves_figure(runs):
  """The tutorial's two panels, accuracy and loss, train and eval, runs overlaid.

  Args:
    runs: {run name: {split: {tag: (steps, values)}}} with splits "train", "eval".
  """
  figure = new_figure(*CURVES_SIZE)
  for panel, tag in enumerate(("accuracy", "loss")):
    ax = figure.add_subplot(1, 2, panel + 1)
    for i, (name, splits) in enumerate(runs.items()):
      for split, style in (("train", "--"), ("eval", ".-")):  # Few evals: dots show.
        if tag in splits.get(split, {}):
          steps, values = splits[split][tag]
          ax.plot(steps, values, style, color=f"C{i}", label=f"{name} {split}")
    ax.set_title(tag)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  figure.tight_layout()
  return figure


def line_figure(runs, split, tag, ylabel):
  """One tag of one split over steps, one line per run."""
  figure = new_figure(*LINE_SIZE)
  ax = figure.add_subplot(1, 1, 1)
  for i, (name, splits) in enumerate(runs.items()):
    if tag in splits.get(split, {}):
      ax.plot(*splits[split][tag], color=f"C{i}", label=name)
  ax.set_xlabel("step")
  ax.set_ylabel(ylabel)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  figure.tight_layout()
  return figure
