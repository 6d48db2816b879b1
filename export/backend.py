"""The backend protocol: what export() asks of ExecuTorch, ONNX and LiteRT, and what it hands them.

A backend is a ``Backend`` subclass (one per folder or module under export/) registered in
``export.api.BACKENDS``. export() calls, in order: ``check_supported`` (before any work),
``prepare`` (quantize and adapt a copy of the model; its eager result is the lowering reference
unless the backend quantizes after lowering), ``lower`` (write the model file(s) into the staging
directory, return the method signatures) and ``lowering_reference`` (for verify).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

from torch import nn

from gemma_edge.models.errors import InputError
from gemma_edge.quant import Recipe

__all__ = ["Backend", "FunctionBackend", "Prepared", "LowerRequest"]


@dataclass
class Prepared:
    """A backend's prepared model and what ``lower`` must know of how it was prepared."""

    model: nn.Module
    notes: dict[str, Any] = field(default_factory=dict)  # e.g. ONNX's quantization layout, for the manifest


@dataclass(frozen=True)
class LowerRequest:
    """What an artifact is lowered for: positions, prefill chunk, metadata, recipe, destination and
    the backend's own options (``Backend.options``)."""

    max_seq_len: int
    prefill_chunk: int
    metadata: dict
    recipe: Recipe
    out: Path
    options: dict[str, Any] = field(default_factory=dict)


class Backend(ABC):
    name: ClassVar[str]
    model_file: ClassVar[str]
    options: ClassVar[dict[str, str]] = {}  # option name -> what it does (only this backend takes them)
    prefill_chunk: ClassVar[int] = 128  # the default prefill chunk (export's prefill_chunk=None), at most

    @abstractmethod
    def runtime_version(self) -> str: ...

    @abstractmethod
    def check_supported(self, recipe: Recipe, ops: str) -> None:
        """Raise ExportError for a recipe / ops mode this backend cannot realise correctly."""

    @abstractmethod
    def prepare(self, model: nn.Module, recipe: Recipe, ops: str, *, copy_model: bool = True,
                calibration: list[int] | None = None) -> Prepared: ...  # fmt: skip

    @abstractmethod
    def lower(self, prepared: Prepared, req: LowerRequest, progress=lambda msg: None) -> dict:
        """Write the model file(s) into ``req.out``; return the method signatures for the manifest."""

    def bundle(self, d: Path, manifest: dict, tokenizer: Path | None, progress=lambda msg: None) -> dict:
        """After lowering (the tokenizer copied in): write any extra files a stock engine loads
        (LiteRT: ``model.litertlm``); return manifest entries describing them."""
        return {}

    def check_options(self, options: dict[str, Any], ops: str = "portable") -> None:
        """Refuse options this backend does not take (or, in a subclass, values it cannot realise
        with ``ops``) before any work is done."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            takes = ", ".join(self.options) or "none"
            raise InputError(f"option(s) {', '.join(unknown)} are not {self.name} options; {self.name} takes: {takes}")

    def lowering_reference(self, model: nn.Module, recipe: Recipe, ops: str, artifact_dir: Path,
                           prepared: Prepared | None = None, calibration: list[int] | None = None,
                           ) -> nn.Module:  # fmt: skip
        """The eager model quantized as the artifact's runtime runs it: by default the prepared
        model (prepared again from the fp32 ``model`` with the same calibration when not given)."""
        if prepared is None:
            prepared = self.prepare(model, recipe, ops, calibration=calibration)
        return prepared.model


class FunctionBackend(Backend):
    """A Backend whose steps are its package's functions (``steps``): ``runtime_version()``,
    ``check_supported(recipe, ops)``, ``prepare(model, recipe, ops, copy_model=, calibration=)`` ->
    the prepared nn.Module, and ``lower(model, *, max_seq_len, prefill_chunk, metadata, recipe, out,
    progress)`` -> the method signatures."""

    steps: ClassVar[SimpleNamespace]

    def runtime_version(self) -> str:
        return self.steps.runtime_version()

    def check_supported(self, recipe: Recipe, ops: str) -> None:
        self.steps.check_supported(recipe, ops)

    def prepare(self, model, recipe, ops, *, copy_model=True, calibration=None) -> Prepared:
        return Prepared(self.steps.prepare(model, recipe, ops, copy_model=copy_model, calibration=calibration))

    def lower(self, prepared: Prepared, req: LowerRequest, progress=lambda msg: None) -> dict:
        return self.steps.lower(prepared.model, max_seq_len=req.max_seq_len, prefill_chunk=req.prefill_chunk,
                                metadata=req.metadata, recipe=req.recipe, out=req.out, progress=progress)  # fmt: skip
