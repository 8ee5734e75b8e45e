"""The model registry: `MODELS.build("name(key=value)", num_classes, image_size)`.

Every model takes float images in [0, 255] and normalizes them itself, so a saved
model scores raw pixels. Logits are float32 under any mixed-precision policy.
Importing this package registers every family below.
"""

from research.models.registry import MODELS, TRAINING_DEFAULTS, build, defaults_of  # noqa: F401
from research.models.registry import HEAD_LAYER, at_image_size, head_indices  # noqa: F401
from research.models.registry import init_from_data, training_defaults  # noqa: F401
# Each module registers its models.
from research.models import airbench, backbones, cnn, resnet  # noqa: F401,E402
from research.models import resnet18, vit, wrn  # noqa: F401,E402
from research.models.airbench import whitening_biases  # noqa: F401,E402
