"""PyAV, always imported after OpenCV: the other order makes cv2's GUI calls spin forever (PyAV #978).

Every module of the package takes ``av`` from here (``from ._av import av``), which keeps that order without
the package's ``__init__`` importing OpenCV: ``import rvm_live`` stays light, so ``rvm-live`` installs its
signal handlers before any heavy import.
"""

import cv2  # noqa: F401  isort: skip
import av  # isort: skip

__all__ = ["av"]
