"""research/ideas/update_ratio.py: a probe of each layer's update over its weights."""

import numpy as np

from tests.test_probes import _one_step


def test_each_layers_ratio_is_its_update_norm_over_its_weight_norm(make_config):
  config = make_config(model="baseline_cnn", image_size=32, optimizer="sgd", momentum=0.0,
                       weight_decay=0.0, learning_rate=0.5, probes="update_ratio")
  means, before, after, _ = _one_step(config)
  assert len(means) == 5 and all(v > 0 for v in means.values())  # 4 convs and a dense.
  norm = lambda arrays: np.sqrt(sum(float(np.sum(np.square(a))) for a in arrays))
  kernel, bias = after[0], after[1]  # The first conv layer's, first in sorted order.
  expected = norm([kernel - before[0], bias - before[1]]) / norm([kernel, bias])
  np.testing.assert_allclose(means[sorted(means)[0]], expected, rtol=1e-4)
