"""The Byte Latent Transformer and its parts."""
from ..nn.stack import StackConfig
from .blt import ByteLatentTransformer, load_blt_config
from .config import BLTConfig, CrossAttentionConfig, HashEmbeddingConfig

__all__ = [
    "ByteLatentTransformer", "BLTConfig", "CrossAttentionConfig", "HashEmbeddingConfig", "StackConfig",
    "load_blt_config",
]
