"""SSA-GAN networks with the official class names, arguments and state-dict keys."""
from .discriminator import NetD
from .encoders import CNN_ENCODER, RNN_ENCODER
from .generator import NetG

__all__ = ['NetG', 'NetD', 'RNN_ENCODER', 'CNN_ENCODER']
