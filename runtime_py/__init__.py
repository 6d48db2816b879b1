"""gemma_edge.runtime_py: one Session over ExecuTorch (and, next, ONNX Runtime and LiteRT);
parity checks and benchmarks."""

from . import executorch_session, litert_session, onnx_session  # noqa: F401  (register the backends)
from .litertlm_session import LiteRTLMSession, load_litertlm
from .sampling import Sampler
from .session import Session, load

__all__ = ["LiteRTLMSession", "Sampler", "Session", "load", "load_litertlm"]
