"""Session over LiteRT's interpreter (ai_edge_litert), XNNPACK with the profile's threads.

Prefill runs the ``prefill_{T}`` signature on whole chunks of T and ``decode`` on the rest. The
state stays in the interpreter's own tensors: each signature's inputs and outputs are numpy views
of them, and a call copies the state once, from the outputs of the signature that ran last into its
inputs (the public signature runners copy every state tensor in from Python and out into a new
array each call, which at 1B scale costs more than the weights' traffic).
"""

from __future__ import annotations

import numpy as np
import torch

from gemma_edge.models.errors import ArtifactError

from .memory import release_file_pages
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
            # The interpreter wrapper's per-subgraph tensor views (what SignatureRunner uses inside).
            self.wrapper = self.interp._interpreter
            self.sigs = {}
            for n in sigs:
                r = self.interp.get_signature_runner(n)
                sg = r._subgraph_index
                self.wrapper.AllocateTensors(sg)
                view = lambda i, sg=sg: self.wrapper.tensor(self.wrapper, i, sg)  # noqa: E731
                self.sigs[n] = (sg, {k: view(i) for k, i in r._inputs.items()}, {k: view(i) for k, i in r._outputs})
            # The prefill signature is named after the manifest's prefill chunk.
            self.prefill_name = f"prefill_{self.prefill_chunk}" if self.prefill_chunk > 1 else None
            if self.prefill_name is not None and self.prefill_name not in sigs:
                raise ArtifactError(f"{path} has no signature {self.prefill_name} (prefill_chunk {self.prefill_chunk})")
            self.state_names = [i["name"] for i in methods["decode"]["inputs"][2:]]
            self.state_at = None  # the signature whose outputs hold the state; None: zeros
            # If the interpreter placed one state input over another state's output, copying in
            # place would clobber a value before it is read: those signatures copy through a buffer.
            self.aliased = {
                n for n, (_, ins, outs) in self.sigs.items()
                if any(np.shares_memory(ins[a], outs[b]) for a in self.state_names for b in self.state_names if a != b)
            }  # fmt: skip
        else:
            self.runner = self.interp.get_signature_runner("embed")
            self.max_len = methods["embed"]["inputs"][0]["shape"][1]
        # XNNPACK holds its packed copy of the delegated weights; the rest fault back in from the file.
        release_file_pages(path)

    def reset(self) -> None:
        with self.lock:  # the position and the held state change together
            super().reset()
            if self.config.causal:
                self.state_at = None

    def _run(self, name: str, tokens: np.ndarray, start: int) -> np.ndarray:
        sg, ins, outs = self.sigs[name]
        T = tokens.shape[1]
        ins["tokens"][...] = tokens
        ins["input_pos"][...] = np.arange(start, start + T, dtype=np.int32)
        held = self.sigs[self.state_at][2] if self.state_at else None
        if held is not None and self.state_at == name and name in self.aliased:
            held = {n: held[n].copy() for n in self.state_names}
        for n in self.state_names:
            if held is None:
                ins[n].fill(0)
            else:
                np.copyto(ins[n], held[n])  # numpy copes if the two views overlap
        self.wrapper.Invoke(sg)
        self.state_at = name
        return outs["logits"].copy()

    def _forward(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        t = tokens.numpy()
        i, logits = 0, None
        while i < t.shape[1]:
            whole = self.prefill_name is not None and t.shape[1] - i >= self.prefill_chunk
            n = self.prefill_chunk if whole else 1
            logits = self._run(self.prefill_name if whole else "decode", t[:, i : i + n], start + i)
            i += n
        return torch.from_numpy(logits).reshape(-1)

    def _embed(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        T = tokens.shape[1]
        ids = np.zeros((1, self.max_len), dtype=np.int32)
        m = np.zeros((1, self.max_len), dtype=np.int32)
        ids[:, :T], m[:, :T] = tokens.numpy(), mask.numpy()
        return torch.from_numpy(np.array(self.runner(tokens=ids, attention_mask=m)["embedding"]))
