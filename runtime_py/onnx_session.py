"""Session over ONNX Runtime.

The state stays in ONNX Runtime: each ``past.*`` input and its ``present.*`` output are bound to the
same OrtValue (as onnxruntime-genai's shared past/present buffers are), so a step writes the caches
in place and nothing crosses into Python but the token ids and the logits. This is sound because
every graph reads a past tensor only on the path that computes its present.
"""

from __future__ import annotations

import numpy as np
import torch

from gemma_edge.models.errors import ArtifactError

from .memory import release_file_pages
from .session import Session, register_session


@register_session("onnx")
class OnnxSession(Session):
    @classmethod
    def import_runtime(cls, manifest: dict) -> None:
        import onnxruntime  # noqa: F401

    def _load(self) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if self.threads:
            opts.intra_op_num_threads = self.threads
            opts.inter_op_num_threads = 1
        path = self.dir / self.manifest["model_file"]
        try:
            self.sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
            raise ArtifactError(f"ONNX Runtime could not load {path}: {e}") from None
        # ONNX Runtime maps page-aligned external data; MLAS has packed what MatMulNBits reads.
        for f in self.manifest["files"]:
            if f.startswith(path.name) and f != path.name:
                release_file_pages(self.dir / f, random_reads=True)  # the lookup reads rows
        if self.config.causal:
            sig = self.manifest["methods"]["forward"]
            shapes = {i["name"]: i["shape"] for i in sig["inputs"]}
            # The state tensors follow input_ids / attention_mask and logits, paired in order.
            pairs = [(i["name"], o["name"]) for i, o in zip(sig["inputs"][2:], sig["outputs"][1:])]
            self.io = self.sess.io_binding()
            self.io.bind_output("logits")  # first, so it is get_outputs()[0]
            self.state = {}
            for past, present in pairs:
                v = ort.OrtValue.ortvalue_from_numpy(np.zeros(shapes[past], dtype=np.float32))
                self.state[past] = v
                self.io.bind_ortvalue_input(past, v)
                self.io.bind_ortvalue_output(present, v)

    def _forward(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        T = tokens.shape[1]
        self.io.bind_cpu_input("input_ids", tokens.numpy())
        self.io.bind_cpu_input("attention_mask", np.ones((1, start + T), dtype=np.int64))
        self.sess.run_with_iobinding(self.io)
        # A copy: the numpy view aliases memory ONNX Runtime may reuse on the next run.
        return torch.from_numpy(self.io.get_outputs()[0].numpy().copy()).reshape(-1)

    def _embed(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        feeds = {"input_ids": tokens.numpy(), "attention_mask": mask.to(torch.int64).numpy()}
        return torch.from_numpy(self.sess.run(["sentence_embedding"], feeds)[0])
