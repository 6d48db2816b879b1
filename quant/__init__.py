"""gemma_edge.quant (built in later issues)."""
