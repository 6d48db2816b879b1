"""The import rules of ARCHITECTURE.md, checked on what a fresh interpreter has loaded after an import."""

import subprocess
import sys

import pytest

# package imported -> prefixes that must not be in sys.modules afterwards
RULES = {
    "gemma_edge.models": (
        "gemma_edge.export",
        "gemma_edge.quant",
        "gemma_edge.runtime_py",
        "torchao",
        "executorch",
        "onnx",
        "onnxruntime",
        "ai_edge_litert",
        "litert_torch",
    ),
    "gemma_edge.quant": ("gemma_edge.export", "gemma_edge.runtime_py"),
    "gemma_edge.runtime_py": ("gemma_edge.export", "gemma_edge.quant", "torchao", "litert_torch", "onnxscript"),
}


def _loaded_after(module: str) -> list[str]:
    code = f"import sys, {module}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return out.split()


@pytest.mark.parametrize("module", sorted(RULES))
def test_import_rules(module):
    banned = RULES[module]
    crossed = [m for m in _loaded_after(module) if any(m == b or m.startswith(b + ".") for b in banned)]
    assert crossed == [], f"importing {module} loads {crossed[:10]}"


def test_models_name_no_backend():
    """No file in models/ names a backend, a runtime or its libraries: backends adapt the model from
    their own packages through its seams (Attention.core, RGLRU.scan, RecurrentBlock.conv)."""
    import re
    from pathlib import Path

    import gemma_edge.models

    words = re.compile(r"onnx|executorch|litert|tflite|xnnpack|torchao|genai|GroupQueryAttention|\bORT\b", re.I)
    found = [
        f"{f.name}:{i}: {line.strip()}"
        for f in sorted(Path(gemma_edge.models.__file__).parent.glob("*.py"))
        for i, line in enumerate(f.read_text().splitlines(), 1)
        if words.search(line)
    ]
    assert found == []
