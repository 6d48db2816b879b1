"""Session over ExecuTorch's Python runtime."""

from __future__ import annotations

import torch

from gemma_edge.models.errors import ArtifactError

from .session import Session, register_session


@register_session("executorch")
class ExecuTorchSession(Session):
    def _load(self) -> None:
        import executorch.kernels.quantized  # noqa: F401  (registers the quantized embedding kernels)
        from executorch.runtime import Runtime

        if self.manifest.get("ops") == "fused":
            from gemma_edge.export.kernels import load_executorch_kernels

            load_executorch_kernels()
        if self.threads:
            from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

            _unsafe_reset_threadpool(self.threads)
        path = self.dir / self.manifest["model_file"]
        try:
            self.program = Runtime.get().load_program(str(path))
            self.method = self.program.load_method("forward" if self.config.causal else "embed")
        except RuntimeError as e:
            raise ArtifactError(f"ExecuTorch could not load {path}: {e}") from None

    def _forward(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        return self.method.execute([tokens, torch.tensor([start], dtype=torch.int64)])[0].reshape(-1)

    def _embed(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.method.execute([tokens, mask.to(torch.int64)])[0]
