"""ghostnetv3: train compact CNNs the GhostNetV3 way, ship them fused, verified and fast."""
from .models import create_model, list_models, load_checkpoint
from .rep import RepConv2d, reparameterize, repify, verify_fusion

__version__ = "0.1.0"


def __getattr__(name):  # later layers are imported on first use, keeping `import ghostnetv3` light
    if name == "create_teacher":
        from .distill import create_teacher
        return create_teacher
    if name == "train":  # a classifier, distilled when the config names a teacher or a teacher cache
        from .distill.task import train
        return train
    raise AttributeError(f"module 'ghostnetv3' has no attribute {name!r}")


__all__ = ["create_model", "list_models", "load_checkpoint", "RepConv2d", "reparameterize",
           "verify_fusion", "repify", "create_teacher", "train", "__version__"]
