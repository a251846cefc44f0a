"""LeOCLR (random original image), Table 8: the anchor x is itself a random crop.

Everything else is LeOCLR: f_q(x) is pulled toward f_k(x1) and f_k(x2). The anchor's view kind is
``random-original`` (data/views.py), cropped like the other crops (ContrastiveCrop included), so
the data pipeline, not the method, makes the difference.
"""

from __future__ import annotations

from .leoclr import LeOCLR


class LeOCLRRandomOriginal(LeOCLR):
    """``views = [random crop as the anchor, crop_1, crop_2]``."""

    views = ("random-original", "crop", "crop")
