"""Session over ONNX Runtime: the state lives in OrtValues fed back from ``present.*`` to ``past.*``."""

from __future__ import annotations

import numpy as np
import torch

from gemma_edge.models.errors import ArtifactError

from .session import Session, register_session


@register_session("onnx")
class OnnxSession(Session):
    def _load(self) -> None:
        import onnxruntime as ort

        from gemma_edge.export.onnx_backend import state_names

        opts = ort.SessionOptions()
        if self.threads:
            opts.intra_op_num_threads = self.threads
            opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        path = self.dir / self.manifest["model_file"]
        try:
            self.sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
            raise ArtifactError(f"ONNX Runtime could not load {path}: {e}") from None
        if self.config.causal:
            self.names = state_names(self.config)
            shapes = {i["name"]: i["shape"] for i in self.manifest["methods"]["forward"]["inputs"]}
            self.zero_state = {n: np.zeros(shapes[n], dtype=np.float32) for n, _ in self.names}
            self.state = dict(self.zero_state)
            self.out_names = ["logits", *[o for _, o in self.names]]

    def reset(self) -> None:
        super().reset()
        if self.config.causal:
            self.state = dict(self.zero_state)  # slots are only read once written; zeros for hygiene

    def _forward(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        T = tokens.shape[1]
        feeds = {"input_ids": tokens.numpy(), "attention_mask": np.ones((1, start + T), dtype=np.int64), **self.state}
        outs = self.sess.run(self.out_names, feeds)
        self.state = {n: v for (n, _), v in zip(self.names, outs[1:])}
        return torch.from_numpy(outs[0]).reshape(-1)

    def _embed(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = self.sess.run(
            ["sentence_embedding"], {"input_ids": tokens.numpy(), "attention_mask": mask.to(torch.int64).numpy()}
        )
        return torch.from_numpy(out[0])
