"""The library's own error types: every failure a user can cause raises one of these."""

__all__ = ["GemmaEdgeError", "ConfigError", "CheckpointError", "InputError", "ArtifactError", "ExportError"]


class GemmaEdgeError(Exception):
    """Base class: a problem with what the user gave us, with a message naming it."""


class ConfigError(GemmaEdgeError):
    """An invalid ModelConfig, or a config.json we cannot map."""


class CheckpointError(GemmaEdgeError):
    """A missing, truncated or mismatched checkpoint file or tensor."""


class InputError(GemmaEdgeError):
    """Bad model input: token ids out of range, a sequence too long, a bad argument."""


class ArtifactError(GemmaEdgeError):
    """A missing, tampered or incompatible exported artifact."""


class ExportError(GemmaEdgeError):
    """An export that cannot be done (unsupported combination) or failed its parity check."""
