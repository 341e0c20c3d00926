"""dlas — localized fine-tuning and clinical evaluation of deep-learning auto-segmentation.

See ``src/dlas/README.md`` for what each part of the package owns and how data flows through it.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dlas")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
