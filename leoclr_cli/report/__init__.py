"""What is shown from run directories: the paper's tables and figures beside ours (:mod:`.report`,
with the paper's numbers in :mod:`.paper`) and pictures of the views (:mod:`.pictures`)."""
