"""Model architectures (CNN, LSTM, Transformer), registered by name.

Every model takes standardised features (B, C, F) from a front-end (raw audio: C=1, F=samples) and returns class
logits (B, num_classes). ``embed`` returns the penultimate-layer embedding. Importing this package imports every
module in it (each registers its model in MODELS); the registry adds third-party ones (see lab/registry.py).
"""
from lab.models.base import MODELS, build_model
from lab.registry import import_submodules

__all__ = ["MODELS", "build_model"]

import_submodules(__name__, __path__)
