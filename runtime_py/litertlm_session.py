"""A session over LiteRT-LM (``litert_lm.Engine``, CPU), the engine LiteRT apps ship with, on an
artifact's ``model.litertlm`` (export/litert_backend/litertlm.py).

LiteRT-LM's Python API is text in, text out: it tokenizes the prompt itself (adding BOS), samples
inside the engine and returns detokenized text, so this session has no ``prefill``/``decode`` over
ids like ``Session``; ``generate`` takes and returns text (``on_text`` streams one token's text per
call), ``score`` is LiteRT-LM's text scoring, ``benchmark`` its own benchmark.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from gemma_edge.models.errors import ArtifactError, InputError

from .manifest import read_manifest

__all__ = ["LiteRTLMSession", "load_litertlm"]


class LiteRTLMSession:
    def __init__(self, artifact_dir: str | Path, *, threads: int | None = None) -> None:
        import litert_lm

        self.dir = Path(artifact_dir)
        self.manifest = read_manifest(self.dir)
        entry = self.manifest.get("litertlm")
        if not entry:
            raise ArtifactError(f"{self.dir} has no {self.manifest['model_file'].rsplit('.', 1)[0]}.litertlm: "
                                "LiteRT exports write one for a causal LM with a tokenizer")  # fmt: skip
        self.path = self.dir / entry["file"]
        self.stop_tokens = list(entry["stop_tokens"])
        self.lock = threading.RLock()
        litert_lm.set_min_log_severity(litert_lm.LogSeverity.ERROR)
        backend = litert_lm.Backend.CPU() if threads is None else litert_lm.Backend.CPU(thread_count=threads)
        self._lm, self._backend = litert_lm, backend
        try:
            self.engine = litert_lm.Engine(str(self.path), backend=backend, cache_dir=str(self._cache_dir()))
        except Exception as e:  # LiteRT-LM raises RuntimeError/ValueError with its status text
            raise ArtifactError(f"LiteRT-LM could not load {self.path}: {e}") from None

    def _cache_dir(self) -> Path:
        import tempfile

        d = Path(tempfile.gettempdir()) / "gemma_edge_litertlm_cache"  # XNNPACK weight cache, not the artifact's
        d.mkdir(exist_ok=True)
        return d

    def _sampler(self, temperature: float, top_k: int, top_p: float, seed: int):
        if temperature == 0:
            return self._lm.SamplerConfig(top_k=1, top_p=1.0, temperature=1.0, seed=seed)
        return self._lm.SamplerConfig(top_k=top_k or 1 << 30, top_p=top_p, temperature=temperature, seed=seed)

    def generate(self, prompt: str, *, max_new_tokens: int = 32, temperature: float = 0.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int = 0, on_text: Callable[[str], None] | None = None) -> str:  # fmt: skip
        """Greedy by default; stops at the bundle's stop tokens or after ``max_new_tokens``."""
        if not isinstance(prompt, str) or not prompt:
            raise InputError("LiteRT-LM takes a non-empty text prompt (it tokenizes it itself)")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        with self.lock:
            s = self.engine.create_session(apply_prompt_template=False, max_output_tokens=max_new_tokens,
                                           sampler_config=self._sampler(temperature, top_k, top_p, seed))  # fmt: skip
            try:
                s.run_prefill([prompt])
                pieces = []
                for r in s.run_decode_async():
                    pieces.append(r.texts[0])
                    if on_text:
                        on_text(r.texts[0])
                return "".join(pieces)
            finally:
                s.close()

    def score(self, prompt: str, continuation: str) -> float:
        """LiteRT-LM's log-likelihood score of ``continuation`` after ``prompt``."""
        with self.lock:
            s = self.engine.create_session(apply_prompt_template=False)
            try:
                s.run_prefill([prompt])
                return float(s.run_text_scoring([continuation]).scores[0])
            finally:
                s.close()

    def benchmark(self, prefill_tokens: int = 128, decode_tokens: int = 128):
        """LiteRT-LM's own ``Benchmark`` on this bundle (its BenchmarkInfo)."""
        return self._lm.Benchmark(model_path=str(self.path), backend=self._backend, prefill_tokens=prefill_tokens,
                                  decode_tokens=decode_tokens, cache_dir=str(self._cache_dir())).run()  # fmt: skip


def load_litertlm(artifact_dir: str | Path, *, threads: int | None = None) -> LiteRTLMSession:
    return LiteRTLMSession(artifact_dir, threads=threads)
