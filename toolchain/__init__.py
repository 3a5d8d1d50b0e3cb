"""edgetl toolchain: the laptop side (data, training, conversion, parity, reports, CLI).

TensorFlow is imported only inside the functions that need it (see modeling.import_keras)."""

from edge_runtime import __version__

__all__ = ["__version__"]
