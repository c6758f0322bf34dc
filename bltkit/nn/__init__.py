"""Shared layers used by every stack in bltkit (BLT's local and global models, the entropy model,
and the fixed-K patch-training LM): one implementation, so that "same backbone" means same code."""
from .norm import RMSNorm
from .rope import apply_rope, rope_angles
from .ffn import SwiGLU, ffn_hidden_dim
from .attention import SelfAttention, CrossAttention, attend
from .block import TransformerBlock
from .stack import StackConfig, transformer_blocks
from .init import trunc_normal_

__all__ = [
    "RMSNorm", "apply_rope", "rope_angles", "SwiGLU", "ffn_hidden_dim", "SelfAttention",
    "CrossAttention", "attend", "TransformerBlock", "StackConfig", "transformer_blocks", "trunc_normal_",
]
