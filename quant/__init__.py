"""gemma_edge.quant: named recipes and their application per backend."""

from .recipes import RECIPES, Recipe, parse_recipe
from .torchao_apply import quantize_for_executorch

__all__ = ["RECIPES", "Recipe", "parse_recipe", "quantize_for_executorch"]
