"""Fréchet Audio Distance done carefully: float64 maths by the symmetric route (``distance``), embedding sets
grouped by clip (``sets``), bootstrap confidence intervals and FAD-infinity (``compare``), and the embedding
backends behind one registry (``backends``)."""
from lab.fad.backends import BACKENDS, Backend, build_backend
from lab.fad.compare import fad, fad_infinity, sample_size_warnings
from lab.fad.distance import FrechetError, frechet_distance, frechet_distance_of, gaussian_stats
from lab.fad.sets import EmbeddingSet

__all__ = ["BACKENDS", "Backend", "build_backend", "fad", "fad_infinity", "sample_size_warnings", "FrechetError",
           "frechet_distance", "frechet_distance_of", "gaussian_stats", "EmbeddingSet"]
