"""gemma_edge.export (built in later issues)."""
