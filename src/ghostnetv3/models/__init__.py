"""Models: GhostNetV3/V2 of our own, any timm model by name, and checkpoint loading."""
from .checkpoint import convert_state_dict, load_checkpoint, read_state_dict, save_state_dict
from .ghostnet import GhostNet
from .registry import create_model, is_ours, list_models, register_with_timm

register_with_timm()  # our gnv3_*/gnv2_* names in timm.create_model, once timm is imported

__all__ = ["GhostNet", "create_model", "list_models", "is_ours", "load_checkpoint", "read_state_dict",
           "convert_state_dict", "save_state_dict"]
