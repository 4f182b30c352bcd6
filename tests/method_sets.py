"""The registered methods split by what they explain, for the tests that run every method.

Layer methods (``CNN_METHODS``) run on any network, the generic tests' CNNs included.
Attention methods (class flag ``needs_attention``: LeGrad, attention rollout, gradient-
weighted rollout) read a vision transformer's attention maps, refuse a CNN with an error
naming the fix, and are tested on transformers in test_attention_methods.py.
"""

from pytorch_grad_cam import METHODS

ATTENTION_METHODS = {name: cls for name, cls in METHODS.items() if cls.needs_attention}
CNN_METHODS = {name: cls for name, cls in METHODS.items() if name not in ATTENTION_METHODS}
