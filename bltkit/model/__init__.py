"""The Byte Latent Transformer and its parts."""
from .blt import ByteLatentTransformer, blt_config_from_dict, blt_config_to_dict, load_blt_config
from .config import BLTConfig, CrossAttentionConfig, GlobalConfig, HashEmbeddingConfig, LocalConfig

__all__ = [
    "ByteLatentTransformer", "BLTConfig", "CrossAttentionConfig", "GlobalConfig", "HashEmbeddingConfig",
    "LocalConfig", "blt_config_from_dict", "blt_config_to_dict", "load_blt_config",
]
