"""``python -m leoclr_cli`` (also the entry for ``torchrun -m leoclr_cli``)."""

from .cli import main

main()
