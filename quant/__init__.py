"""gemma_edge.quant: named recipes and their application per backend."""

from . import ptq
from .apply import apply, register
from .recipes import RECIPES, Recipe, parse_recipe
from .torchao_apply import quantize_for_executorch

__all__ = ["ptq", "apply", "register", "RECIPES", "Recipe", "parse_recipe", "quantize_for_executorch"]
