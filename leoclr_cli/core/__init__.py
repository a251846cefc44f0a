"""Infrastructure every command runs on: the one training loop (:mod:`.engine`), checkpoints
(:mod:`.checkpoint`), run directories (:mod:`.rundir`), networks (:mod:`.nets`), DDP
(:mod:`.distributed`), signals (:mod:`.preempt`), CPU threads (:mod:`.threads`), progress
(:mod:`.progress`), experiment trackers (:mod:`.tracking`) and atomic file writes (:mod:`.atomic`, a leaf)."""
