"""Every file the project writes or reads as weights: safetensors only.

* ``backbone.safetensors`` (:mod:`.backbone`): torchvision key names (``conv1.weight``,
  ``layer1.0.bn1.running_mean``, no ``fc``), so ``torchvision.models.resnet50().load_state_dict(load_file(p),
  strict=False)`` leaves only ``fc.*`` missing; a timm backbone (``timm:NAME``) keeps timm's keys and loads
  into ``timm.create_model(NAME, num_classes=0, **timm_kwargs)``. The header carries the metadata (format
  version, kind, arch, cifar_stem, method, epoch, the protocol as JSON; timm_model, timm_kwargs, timm_version).
* training state (:mod:`.train_state`; the files, named by :mod:`.rundir`:
  ``checkpoints/state_eNNNN.safetensors`` after NNNN epochs, or
  ``state_eNNNN_sSSSSSS.safetensors`` after SSSSSS more steps of the next epoch): model and
  optimizer tensors, the RNG states, the partial epoch's metric sums, any task/dataset extra
  state, and the non-tensor parts as JSON in the header.
* the file format itself, its checksum and its checks (:mod:`.tensorfile`); a foreign ``.pth``
  imported (:mod:`.pth_import`).

This module only gathers their public names: ``from ..core import checkpoint as ckpt``.
"""

from .backbone import load_backbone, load_fitting, random_backbone, random_backbone_file, save_backbone
from .pth_import import IMPORT_PREFIXES, import_torch_checkpoint
from .rundir import latest_state, list_states, prune_states, state_path
from .tensorfile import (CHECKSUM_KEY, FORMAT_VERSION, KIND_BACKBONE, KIND_LINEAR, KIND_STATE, MAX_HEADER,
                         file_sha256, load_tensors, read_metadata, save_tensors, verify)
from .train_state import (flatten_optimizer, load_train_state, rng_state, save_train_state, seed_everything,
                          set_rng_state, unflatten_optimizer)

__all__ = [
    "load_backbone", "load_fitting", "random_backbone", "random_backbone_file", "save_backbone",
    "CHECKSUM_KEY", "FORMAT_VERSION", "KIND_BACKBONE", "KIND_LINEAR", "KIND_STATE", "MAX_HEADER", "file_sha256",
    "load_tensors", "read_metadata", "save_tensors", "verify",
    "IMPORT_PREFIXES", "import_torch_checkpoint",
    "latest_state", "list_states", "prune_states", "state_path",
    "flatten_optimizer", "load_train_state", "rng_state", "save_train_state", "seed_everything", "set_rng_state",
    "unflatten_optimizer",
]
