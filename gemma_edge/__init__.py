"""gemma-edge: Gemma models from PyTorch to ExecuTorch, ONNX Runtime and LiteRT."""

from gemma_edge.models.errors import GemmaEdgeError

__all__ = ["GemmaEdgeError"]
__version__ = "0.1.0"
