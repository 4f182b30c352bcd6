"""Faithfulness and localisation metrics for CAMs.

Every metric takes ``(input_tensor, cams, targets, model, ...)`` in that order and
returns one number per image (numpy float32, shape (B,)). ``cams`` may be a numpy
array (B, H, W), a list of (H, W) arrays, or a torch tensor; float, bool or uint8.
"""
