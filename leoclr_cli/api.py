"""The Python API: the functions docs/python-api.md shows, in one place, kept stable and tested
(tests/test_python_api.py runs the page's code). Each takes the same protocols as the command line.

* :func:`load_protocol` (``kind``, a YAML file or None, dotted overrides, dotted defaults) and
  :func:`protocol_file` (a protocol installed with leoclr, by name or file name: ``quickstart`` or
  ``quickstart.yaml``; ``leoclr protocols`` lists them);
* :func:`own_data_protocol`: what ``leoclr pretrain --data DIR`` uses for a folder of images without ``-p``;
* :func:`run_pretrain` (a pretraining protocol and a run directory);
* :func:`evaluation_defaults` (an evaluation kind and a run directory, backbone file or ``random:ARCH``: the
  backbone file and the defaults its pretraining implies; :func:`backbone_and_defaults` without the kind),
  :func:`run_linear_eval`, :func:`run_knn`;
* :func:`run_embed` (one row per image) and :func:`export_state_dict` (torchvision / timm).
"""

from .config import installed as protocol_file
from .config import load_protocol
from .core.backbone import export_state_dict
from .evaluate.embed import run_embed
from .evaluate.inputs import backbone_and_defaults, evaluation_defaults
from .evaluate.knn_run import run_knn
from .evaluate.linear import run_linear_eval
from .workflows.own_data import own_data_protocol
from .workflows.pretrain import run_pretrain

__all__ = ["load_protocol", "protocol_file", "own_data_protocol", "run_pretrain", "backbone_and_defaults",
           "evaluation_defaults", "run_linear_eval", "run_knn", "run_embed", "export_state_dict"]
