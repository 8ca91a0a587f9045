"""Object detection with a GhostNetV3 backbone: torchvision's FCOS + FPN, trained by the engine.

    from ghostnetv3.detect import DetectionTask, load_detection_dataset
    from ghostnetv3.engine.train import train
    train(load_config("recipes/detect_fashion.yaml"), task=DetectionTask())
"""
from .data import DetectionSet, build_fashion_detection, load_detection_dataset, read_coco
from .model import DenseOutputs, build_detector
from .task import DetectionTask, coco_map

__all__ = ["DetectionSet", "build_fashion_detection", "load_detection_dataset", "read_coco",
           "DenseOutputs", "build_detector", "DetectionTask", "coco_map"]
