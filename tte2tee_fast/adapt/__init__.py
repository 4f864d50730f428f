"""Adaptation of the TTE base model to a new modality: LoRA adapters, MaskR² label remap
(:mod:`tte2tee_fast.condition.maskr2`), merge. Import the submodules directly."""
