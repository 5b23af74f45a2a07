"""Feature front-ends: waveforms (N, T) -> features (N, C, F). One file each, registered in FRONTENDS; importing this
package imports every module in it, and the registry adds third-party ones (see lab/registry.py)."""
from lab.frontends.base import FRONTENDS, FrontEndKind
from lab.registry import import_submodules

__all__ = ["FRONTENDS", "FrontEndKind"]

import_submodules(__name__, __path__)
