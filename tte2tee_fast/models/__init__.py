"""SemanticUNet (SDM-style, SPADE decoder), its presets, checked save/load and parameter counts."""

from tte2tee_fast.models.io import load_model, model_hash, save_model
from tte2tee_fast.models.presets import PRESETS, UNetPreset, from_preset, preset_config
from tte2tee_fast.models.unet import SemanticUNet, count_parameters

__all__ = [
    "PRESETS",
    "SemanticUNet",
    "UNetPreset",
    "count_parameters",
    "from_preset",
    "load_model",
    "model_hash",
    "preset_config",
    "save_model",
]
