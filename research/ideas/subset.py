"""A few examples of each class of any dataset, for learning curves by data size or a
quick run on real images:

    --dataset="subset(of='cifar10', per_class=100)"
    --dataset="subset(of='folder', per_class=20)" --data_dir=DIR

The examples kept are each class's first `per_class` in the dataset's own order, the
same in every run; the validation split is then drawn from them, the test split is whole.
"""

import numpy as np

from research.sources import DATASETS, Dataset


@DATASETS.register("subset")
class Subset(Dataset):
  """The first `per_class` training examples of each class of the dataset `of`."""

  def __init__(self, config, of="cifar10", per_class=100):
    if per_class < 1:
      raise ValueError(f"subset: per_class must be >= 1, got {per_class}")
    self.whole = DATASETS.build(of, config.replace(dataset=of))
    self.trains_whole, self.has_test = self.whole.trains_whole, self.whole.has_test
    super().__init__(config)
    self.per_class = per_class

  def class_names(self):
    return self.whole.class_names()

  def open(self):
    train, test, names = self.whole.open()
    first = [np.flatnonzero(train.labels == label)[:self.per_class]
             for label in range(len(names))]
    return train.subset(np.sort(np.concatenate(first))), test, names
