"""Session over ExecuTorch's Python runtime."""

from __future__ import annotations

import contextlib

import torch

from gemma_edge.models.errors import ArtifactError

from .memory import release_file_pages
from .session import Session, register_session


@register_session("executorch")
class ExecuTorchSession(Session):
    @classmethod
    def import_runtime(cls, manifest: dict) -> None:
        import executorch.kernels.quantized  # noqa: F401  (registers the quantized embedding kernels)
        from executorch.runtime import Runtime

        if manifest.get("ops") == "fused":
            from gemma_edge.runtime_py.kernels import load_executorch_kernels

            load_executorch_kernels()
        Runtime.get()

    def _load(self) -> None:
        from executorch.runtime import Runtime

        self.import_runtime(self.manifest)
        if self.threads:
            from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

            _unsafe_reset_threadpool(self.threads)
        path = self.dir / self.manifest["model_file"]
        try:
            self.program = Runtime.get().load_program(str(path))
            self.method = self.program.load_method("forward" if self.config.causal else "embed")
        except RuntimeError as e:
            raise ArtifactError(f"ExecuTorch could not load {path}: {e}") from None
        release_file_pages(path)

    @contextlib.contextmanager
    def _runtime_call(self):
        """torch's intra-op pool at one thread while the runtime runs. ExecuTorch has its own pool
        (sized by ``threads``); torch here only copies the outputs out and samples, and each such op
        over the 262k logits opens an OpenMP region whose worker then spins, taking a core from
        ExecuTorch's pool (measured on the real Gemma 3 270M decode: ~14% of the CPU samples)."""
        n = torch.get_num_threads()
        if n == 1:
            yield
            return
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(n)

    def _forward(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        return self.method.execute([tokens, torch.tensor([start], dtype=torch.int64)])[0].reshape(-1)

    def _embed(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.method.execute([tokens, mask.to(torch.int64)])[0]
