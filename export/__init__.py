"""gemma_edge.export: one exporter per backend behind one protocol; artifacts and manifests."""

from .api import BACKENDS, OPS_MODES, export, run_verify
from .artifact import read_manifest

__all__ = ["BACKENDS", "OPS_MODES", "export", "run_verify", "read_manifest"]
