"""Model architectures (CNN, LSTM, Transformer), registered by name.

Every model takes standardised features (B, C, F) from a front-end (raw audio: C=1, F=samples) and returns class
logits (B, num_classes). ``embed`` returns the penultimate-layer embedding.
"""
from lab.models.base import MODELS, build_model
from lab.models import cnn, lstm, transformer  # noqa: F401  (registration)

__all__ = ["MODELS", "build_model"]
