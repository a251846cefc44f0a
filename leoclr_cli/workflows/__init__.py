"""The commands that chain the layers: pretraining (:mod:`.pretrain`: protocol -> data -> views ->
method -> engine -> run directory), the augmentation ablation (:mod:`.ablate`), the quickstart
comparison (:mod:`.quickstart`) and the speed benchmark (:mod:`.bench`)."""
