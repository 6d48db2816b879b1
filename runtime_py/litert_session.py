"""Session over LiteRT's ``CompiledModel`` (ai_edge_litert), XNNPACK with the profile's threads.

Prefill runs the ``prefill_{T}`` signature on whole chunks of T and ``decode`` on the rest. The state
lives in one runtime-held ``TensorBuffer`` per state tensor, bound as both the input and the output
of every signature, so a step updates the caches in place: nothing crosses into Python but the token
ids and the logits, and the caches exist once (the ``Interpreter`` held an input and an output copy
per signature, and its signature runners copied every cache through Python on each step).

XNNPACK packs the weights once into a weight-cache file that every signature shares and that later
loads map instead of repacking (``$GEMMA_EDGE_CACHE/litert/``, keyed by the model's sha256 and this
CPU's flags, as LiteRT-LM keeps its own); the .tflite's pages are dropped once loaded, and what the
graph reads at run time outside XNNPACK (the table's looked-up rows) faults back in from the file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from gemma_edge.models.errors import ArtifactError

from .kernels import cache_root, cpu_flags
from .memory import release_file_pages
from .session import Session, register_session


def _weight_cache(manifest: dict) -> Path | None:
    """The XNNPACK weight-cache file for this model on this CPU (None if its folder can't be made)."""
    root = cache_root() / "litert"
    h = hashlib.sha256(manifest["files"][manifest["model_file"]].encode())
    h.update(cpu_flags().encode())  # packed layouts depend on the instruction set
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return root / f"{h.hexdigest()[:24]}.xnnpack_cache"


@register_session("litert")
class LiteRTSession(Session):
    @classmethod
    def import_runtime(cls, manifest: dict) -> None:
        from ai_edge_litert.compiled_model import CompiledModel  # noqa: F401

    def _load(self) -> None:
        from ai_edge_litert.compiled_model import CompiledModel
        from ai_edge_litert.cpu_options import CpuOptions
        from ai_edge_litert.hardware_accelerator import HardwareAccelerator
        from ai_edge_litert.options import Options

        path = self.dir / self.manifest["model_file"]
        cache = _weight_cache(self.manifest)
        cpu = CpuOptions(num_threads=self.threads or 0, xnnpack_weight_cache_path=str(cache or ""))
        try:
            opts = Options(hardware_accelerators=HardwareAccelerator.CPU, cpu_options=cpu)
            self.model = CompiledModel.from_file(str(path), options=opts)
            sigs = self.model.get_signature_list()
        except (ValueError, RuntimeError) as e:
            raise ArtifactError(f"LiteRT could not load {path}: {e}") from None
        methods = self.manifest["methods"]
        missing = sorted(set(methods) - set(sigs))
        if missing:
            raise ArtifactError(f"{path} has no signature {', '.join(missing)} (its manifest lists them)")
        # Per signature: the buffers of its non-state inputs and outputs, by name; one set of state
        # buffers (made for decode's inputs) serves every signature.
        n_state = 2 if self.config.causal else None  # a causal LM's inputs before its state: tokens, input_pos
        self.sigs = {}
        for name, sig in methods.items():
            make_in, make_out = self.model.create_input_buffer_by_name, self.model.create_output_buffer_by_name
            ins = {i["name"]: make_in(name, i["name"]) for i in sig["inputs"][:n_state]}
            outs = {o["name"]: make_out(name, o["name"]) for o in sig["outputs"][:1]}
            self.sigs[name] = (ins, outs)
        if self.config.causal:
            self.prefill_name = f"prefill_{self.prefill_chunk}" if self.prefill_chunk > 1 else None
            if self.prefill_name is not None and self.prefill_name not in sigs:
                raise ArtifactError(f"{path} has no signature {self.prefill_name} (prefill_chunk {self.prefill_chunk})")
            decode = methods["decode"]
            self.state = {i["name"]: self.model.create_input_buffer_by_name("decode", i["name"])
                          for i in decode["inputs"][n_state:]}  # fmt: skip
            self.state_shapes = {i["name"]: i["shape"] for i in decode["inputs"][n_state:]}
            self.vocab = decode["outputs"][0]["shape"][-1]
            self._zero_state()
        else:
            embed = methods["embed"]
            self.max_len = embed["inputs"][0]["shape"][1]
            self.embed_out = embed["outputs"][0]["name"], embed["outputs"][0]["shape"][-1]
        release_file_pages(path, random_reads=True)  # the lookup reads rows; XNNPACK packed the rest

    def _zero_state(self) -> None:
        for n, buf in self.state.items():
            buf.write(np.zeros(self.state_shapes[n], dtype=np.float32))

    def reset(self) -> None:
        with self.lock:  # the position and the held state change together
            super().reset()
            if self.config.causal:
                self._zero_state()

    def _run(self, name: str, tokens: np.ndarray, start: int) -> np.ndarray:
        ins, outs = self.sigs[name]
        T = tokens.shape[1]
        ins["tokens"].write(tokens.astype(np.int32))
        ins["input_pos"].write(np.arange(start, start + T, dtype=np.int32))
        # The same state buffers in and out: each signature writes its caches in place.
        self.model.run_by_name(name, {**ins, **self.state}, {**outs, **self.state})
        return outs["logits"].read(self.vocab, np.float32)

    def _forward(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        t = tokens.numpy()
        i, logits = 0, None
        while i < t.shape[1]:
            whole = self.prefill_name is not None and t.shape[1] - i >= self.prefill_chunk
            n = self.prefill_chunk if whole else 1
            logits = self._run(self.prefill_name if whole else "decode", t[:, i : i + n], start + i)
            i += n
        return torch.from_numpy(logits)

    def _embed(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        T = tokens.shape[1]
        ids = np.zeros((1, self.max_len), dtype=np.int32)
        m = np.zeros((1, self.max_len), dtype=np.int32)
        ids[:, :T], m[:, :T] = tokens.numpy(), mask.numpy()
        ins, outs = self.sigs["embed"]
        ids_buf, mask_buf = ins.values()  # tokens, attention_mask
        ids_buf.write(ids)
        mask_buf.write(m)
        name, dim = self.embed_out
        self.model.run_by_name("embed", ins, outs)
        return torch.from_numpy(outs[name].read(dim, np.float32))[None]
