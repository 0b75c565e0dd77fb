"""Attention kernels for BlindSight prefill and their PyTorch reference implementations."""

from .reference import reference_attention

__all__ = ["reference_attention"]
