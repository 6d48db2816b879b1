"""Session over LiteRT's interpreter (ai_edge_litert), XNNPACK with the profile's threads.

Prefill runs the ``prefill_{T}`` signature on whole chunks of T and ``decode`` on the rest; the state
tensors are fed to each call and taken back from its outputs.
"""

from __future__ import annotations

import numpy as np
import torch

from gemma_edge.models.errors import ArtifactError

from .session import Session, register_session


@register_session("litert")
class LiteRTSession(Session):
    @classmethod
    def import_runtime(cls, manifest: dict) -> None:
        from ai_edge_litert.interpreter import Interpreter  # noqa: F401

    def _load(self) -> None:
        from ai_edge_litert.interpreter import Interpreter

        path = self.dir / self.manifest["model_file"]
        try:
            self.interp = Interpreter(model_path=str(path), num_threads=self.threads or None)
            sigs = self.interp.get_signature_list()
        except (ValueError, RuntimeError) as e:
            raise ArtifactError(f"LiteRT could not load {path}: {e}") from None
        methods = self.manifest["methods"]
        if self.config.causal:
            self.runners = {n: self.interp.get_signature_runner(n) for n in sigs}
            self.prefill_name = next((n for n in sigs if n.startswith("prefill_")), None)
            self.chunk = int(self.prefill_name.split("_")[1]) if self.prefill_name else 1
            inputs = methods["decode"]["inputs"][2:]
            self.zero_state = {i["name"]: np.zeros(i["shape"], dtype=np.float32) for i in inputs}
            self.state = dict(self.zero_state)
        else:
            self.runner = self.interp.get_signature_runner("embed")
            self.max_len = methods["embed"]["inputs"][0]["shape"][1]

    def reset(self) -> None:
        super().reset()
        if self.config.causal:
            self.state = dict(self.zero_state)

    def _run(self, name: str, tokens: np.ndarray, start: int) -> np.ndarray:
        T = tokens.shape[1]
        out = self.runners[name](
            tokens=tokens.astype(np.int32), input_pos=np.arange(start, start + T, dtype=np.int32), **self.state
        )
        self.state = {n: out[n] for n in self.state}
        return out["logits"]

    def _forward(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        t = tokens.numpy()
        i, logits = 0, None
        while i < t.shape[1]:
            whole = self.prefill_name is not None and t.shape[1] - i >= self.chunk
            n = self.chunk if whole else 1
            logits = self._run(self.prefill_name if whole else "decode", t[:, i : i + n], start + i)
            i += n
        return torch.from_numpy(np.array(logits)).reshape(-1)

    def _embed(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        T = tokens.shape[1]
        ids = np.zeros((1, self.max_len), dtype=np.int32)
        m = np.zeros((1, self.max_len), dtype=np.int32)
        ids[:, :T], m[:, :T] = tokens.numpy(), mask.numpy()
        return torch.from_numpy(np.array(self.runner(tokens=ids, attention_mask=m)["embedding"]))
