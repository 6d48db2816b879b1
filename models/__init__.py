"""gemma_edge.models: one export-first definition of Gemma 2, Gemma 3, RecurrentGemma and
EmbeddingGemma, their presets, checkpoint loading, tokenizer and custom ops."""

from . import ops  # registers torch.ops.gemma_edge.*
from .attention import AttentionCore, set_core
from .build import build, fuse_projections, init_random_, untie_head, use_custom_ops
from .checkpoint import load, read_config
from .config import FAMILIES, LAYER_KINDS, ModelConfig
from .errors import ArtifactError, CheckpointError, ConfigError, ExportError, GemmaEdgeError, InputError
from .inspect import param_counts, state_bytes
from .model import CausalLM, Encoder
from .presets import DEFAULT_PRESET, PRESETS, get_preset
from .tokenizer import EMBEDDING_PROMPTS, Tokenizer

__all__ = [
    "ops", "build", "fuse_projections", "init_random_", "untie_head", "use_custom_ops", "AttentionCore", "set_core",
    "load",
    "read_config",
    "FAMILIES", "LAYER_KINDS",
    "ModelConfig", "ArtifactError", "ExportError", "CheckpointError", "ConfigError", "GemmaEdgeError", "InputError",
    "param_counts",
    "state_bytes", "CausalLM", "Encoder", "DEFAULT_PRESET", "PRESETS", "get_preset", "EMBEDDING_PROMPTS",
    "Tokenizer",
]  # fmt: skip
