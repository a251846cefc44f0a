"""Detection transfer (Tables 4 and 9): Faster R-CNN R50-C4 with MoCo's recipe.

* :mod:`.export`: torchvision backbone keys -> Detectron2 names, and the pickle Detectron2 reads.
* :mod:`.datasets`: VOC (VOCdevkit XML) and COCO (instances JSON) readers, and the train transform.
* :mod:`.metrics`: VOC07 11-point AP over IoU 0.50:0.95 (as Detectron2's evaluator), COCO AP.
* :mod:`.torchvision_r50c4`: the same R50-C4 built from torchvision's FasterRCNN, trained by the engine.
* :mod:`.detectron2_backend`: MoCo's Detectron2 configs and training through Detectron2's launcher.
* :mod:`.run`: ``leoclr detect``: backend choice, trials, the run directory and result.json.
"""
