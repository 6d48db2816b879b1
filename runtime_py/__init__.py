"""gemma_edge.runtime_py (built in later issues)."""
