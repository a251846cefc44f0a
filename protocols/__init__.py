"""The protocol files of the paper's experiments (the repository's protocols/ directory)."""
