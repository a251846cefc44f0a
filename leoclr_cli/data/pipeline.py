"""The pretraining dataset: each image to the views a method asks for, by the protocol's backend."""

from __future__ import annotations

from typing import Optional

from ..config import PretrainProtocol
from ..core import distributed
from ..errors import UserError
from .ccrop import CropBoxes
from .gpu_views import DecodeAndDraw
from .ops import draft_side
from .shards import ShardSource, ShardViews
from .views import AugmentedDataset, ViewMaker


def view_fn(p: PretrainProtocol, kinds, boxes: Optional[CropBoxes] = None):
    """What the loader workers run on each image: the views (pil backend), or the decoded image and
    its views' parameters (tensor backend, finished on the device by :class:`TensorViews`)."""
    if p.augment.backend == "tensor":
        if boxes is not None:
            raise UserError(f"augment.crops '{p.augment.crops}' needs augment.backend 'pil' (the tensor backend "
                            "draws random crops only)")
        return DecodeAndDraw(p.augment, kinds)
    return ViewMaker(p.augment, kinds, boxes)


def augmented(p: PretrainProtocol, source, kinds, boxes: Optional[CropBoxes] = None,
              batch_size: int = 1) -> AugmentedDataset | ShardViews:
    """The pretraining dataset: each image of ``source`` to its views, seeded by (seed, epoch, index);
    WebDataset shards (:class:`ShardSource`) stream as :class:`ShardViews`, this rank's share in batches
    of ``batch_size``."""
    fn = view_fn(p, kinds, boxes)
    if hasattr(source, "set_draft"):
        source.set_draft(draft_side(p.augment) if p.augment.draft else None)
    if isinstance(source, ShardSource):
        return ShardViews(source, fn, seed=p.seed, batch_size=batch_size, rank=distributed.rank(),
                          world=distributed.world_size(), shuffle=p.data.shuffle, on_bad_image=p.data.on_bad_image)
    return AugmentedDataset(source, fn, seed=p.seed, on_bad_image=p.data.on_bad_image)
