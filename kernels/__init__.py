"""Attention kernels for BlindSight prefill and their PyTorch reference implementations."""

from .blindsight_attention import KernelConfig, blindsight_attention
from .reference import reference_attention

__all__ = ["KernelConfig", "blindsight_attention", "reference_attention"]
