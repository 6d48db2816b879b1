"""gemma_edge.runtime_py: one Session over ExecuTorch (and, next, ONNX Runtime and LiteRT);
parity checks and benchmarks."""

from . import executorch_session, litert_session, onnx_session  # noqa: F401  (register the backends)
from .sampling import Sampler
from .session import Session, load

__all__ = ["Sampler", "Session", "load"]
