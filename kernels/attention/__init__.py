"""Multi-head attention on [batch, seq, heads, head_dim], dispatched to the best backend."""
from kernels.attention.api import IMPLEMENTATIONS, dot_product_attention

__all__ = ["IMPLEMENTATIONS", "dot_product_attention"]
