"""Conditioning: the MaskR² label remap (spec, validation, label map -> one-hot), the step of the
data path between a label map and the network. Import :mod:`tte2tee_fast.condition.maskr2`."""
