"""leoclr: LeOCLR / MoCo-v2 pretraining and the paper's evaluation protocols."""

__version__ = "0.1.0"
