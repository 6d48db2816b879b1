"""One Session over the runtimes: it owns the model state between calls.

``prefill(ids)`` runs a prompt in chunks and returns the last position's logits; ``decode(id)``
advances one token; ``generate`` samples; ``embed`` runs an encoder artifact. Inputs are checked
before they reach the runtime (token ids, lengths), since a runtime would fail far less clearly.

Threads: a Session may be shared. Each public call holds ``session.lock`` (a re-entrant lock) for
its whole run, so ``generate`` and ``embed`` are atomic and two threads' calls never interleave
inside the runtime. A sequence built from several ``prefill``/``decode`` calls shares one position:
a thread that does that on a shared Session holds ``with session.lock:`` around the sequence.
"""

from __future__ import annotations

import contextlib
import functools
import numbers
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from gemma_edge.models import ModelConfig, Tokenizer
from gemma_edge.models.errors import ArtifactError, InputError

from .manifest import read_manifest
from .sampling import Sampler

__all__ = ["Session", "load", "import_runtime", "register_session"]

_SESSIONS: dict[str, type[Session]] = {}


def register_session(backend: str):
    def deco(cls):
        _SESSIONS[backend] = cls
        return cls

    return deco


def _locked(method):
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with self.lock, self._runtime_call():
            return method(self, *args, **kwargs)

    return run


class Session:
    """Base class; a backend implements ``_load``, ``_forward`` (causal) and ``_embed`` (encoder)."""

    def __init__(self, artifact_dir: Path, manifest: dict, threads: int | None = None) -> None:
        self.dir = Path(artifact_dir)
        self.manifest = manifest
        self.config = ModelConfig.from_dict(manifest["config"])
        self.max_seq_len = int(manifest["max_seq_len"])
        self.prefill_chunk = int(manifest.get("prefill_chunk", 1))
        self.special = manifest["special_tokens"]
        self._tokenizer: Tokenizer | None = None
        self.threads = threads
        self.pos = 0
        self.lock = threading.RLock()
        self._load()

    @property
    def tokenizer(self) -> Tokenizer | None:
        """The artifact's SentencePiece tokenizer (None if it ships none), loaded on first use: a
        caller that passes token ids never holds it. (Gemma's 262k-piece model takes ~45 MiB of
        RSS once loaded, a third of the 270M's 4-bit .pte.)"""
        if self._tokenizer is None:
            with self.lock:
                tok = self.dir / "tokenizer.model"
                if self._tokenizer is None and tok.exists():
                    self._tokenizer = Tokenizer(tok, self.config.family)
        return self._tokenizer

    # -- backend hooks --------------------------------------------------------------------------
    @classmethod
    def import_runtime(cls, manifest: dict) -> None:
        """Import and initialise the runtime (and any kernel library) an artifact needs, without a
        model: what every process using this backend pays once, whatever the model."""

    def _load(self) -> None:
        raise NotImplementedError

    def _runtime_call(self):
        """A context every public call runs in (re-entered by nested calls)."""
        return contextlib.nullcontext()

    def _forward(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        """tokens (1, T) int64 at positions start.. -> last-position logits (vocab,)."""
        raise NotImplementedError

    def _embed(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # -- checks ---------------------------------------------------------------------------------
    def _check_ids(self, ids: Sequence[int]) -> torch.Tensor:
        t = check_ids(ids)
        if t.numel() == 0:
            raise InputError("no tokens given")
        v = self.config.vocab_size
        bad = t[(t < 0) | (t >= v)]
        if bad.numel():
            raise InputError(f"token id {int(bad[0])} is out of range: the model's vocab_size is {v}")
        return t

    def _need(self, causal: bool) -> None:
        if self.config.causal != causal:
            kind = "a causal LM" if causal else "an encoder"
            raise InputError(f"this artifact ({self.config.family}) is not {kind}")

    # -- causal LM ------------------------------------------------------------------------------
    @_locked
    def reset(self) -> None:
        """Start a new sequence (the state is overwritten from position 0)."""
        self.pos = 0

    @_locked
    def prefill(self, ids: Sequence[int], *, chunk_sizes: Sequence[int] | None = None) -> torch.Tensor:
        """Run ``ids`` from the current position; return the last position's logits (vocab,)."""
        self._need(causal=True)
        t = self._check_ids(ids)
        if self.pos + t.numel() > self.max_seq_len:
            raise InputError(
                f"{self.pos + t.numel()} tokens exceed this artifact's max_seq_len of {self.max_seq_len} "
                f"({t.numel()} given at position {self.pos})"
            )
        sizes = list(chunk_sizes) if chunk_sizes else []
        start, logits = 0, None
        while start < t.numel():
            n = sizes.pop(0) if sizes else self.prefill_chunk
            n = min(n, self.prefill_chunk, t.numel() - start)
            logits = self._forward(t[start : start + n][None], self.pos)
            self.pos += n
            start += n
        return logits

    @_locked
    def decode(self, token: int) -> torch.Tensor:
        """One token at the current position: ``prefill([token])`` (whose checks answer anything but
        a plain in-range int at a free position), without its per-call tensor checks."""
        if (type(token) is not int or not 0 <= token < self.config.vocab_size or self.pos >= self.max_seq_len
                or not self.config.causal):  # fmt: skip
            return self.prefill([token])
        logits = self._forward(torch.tensor([[token]], dtype=torch.int64), self.pos)
        self.pos += 1
        return logits

    @_locked
    def generate(
        self,
        prompt: str | Sequence[int],
        *,
        max_new_tokens: int = 32,
        sampler: Sampler | None = None,
        stop_tokens: Sequence[int] | None = None,
        on_token: Callable[[int], None] | None = None,
    ) -> list[int]:
        """Sample up to ``max_new_tokens`` after ``prompt`` (text or ids); return the new ids."""
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise InputError("this artifact has no tokenizer.model: pass token ids, not text")
            prompt = self.tokenizer.encode(prompt)
        sampler = sampler or Sampler()
        stops = set(self.special["eos"] if stop_tokens is None else stop_tokens)
        self.reset()
        logits = self.prefill(prompt)
        out: list[int] = []
        while len(out) < max_new_tokens and self.pos < self.max_seq_len:
            nxt = sampler(logits)
            out.append(nxt)
            if on_token:
                on_token(nxt)
            if nxt in stops or len(out) == max_new_tokens or self.pos >= self.max_seq_len:
                break
            logits = self.decode(nxt)
        return out

    # -- encoder --------------------------------------------------------------------------------
    @_locked
    def embed(self, texts: Sequence[str] | Sequence[Sequence[int]], *, dim: int | None = None,
              prompt: str | None = None) -> torch.Tensor:  # fmt: skip
        """Normalised embeddings (N, dim), one text (or id list) at a time."""
        self._need(causal=False)
        full = self.config.embed_dim
        if dim is not None and dim != full and dim not in self.config.matryoshka_dims:
            raise InputError(f"dim {dim} is not one of this model's sizes {self.config.matryoshka_dims}")
        if isinstance(texts, str) or not isinstance(texts, Sequence) or not texts:
            raise InputError("embed takes a non-empty list of texts (or of token-id lists)")
        rows = []
        for i, item in enumerate(texts):
            if not isinstance(item, (str, Sequence, torch.Tensor)):
                raise InputError(f"embed takes a list of texts or of token-id lists: item {i} is {item!r}")
            if isinstance(item, str):
                if self.tokenizer is None:
                    raise InputError("this artifact has no tokenizer.model: pass token ids, not text")
                ids = self.tokenizer.encode_batch([item], prompt=prompt)[0][0]
            else:
                ids = list(item)
            t = self._check_ids(ids)
            if t.numel() > self.max_seq_len:
                raise InputError(f"{t.numel()} tokens exceed this artifact's max_seq_len of {self.max_seq_len}")
            e = self._embed(t[None], torch.ones_like(t)[None]).reshape(-1)
            rows.append(e)
        e = torch.stack(rows)
        if dim is not None and dim != full:
            e = F.normalize(e[:, :dim], dim=-1)
        return e


def check_ids(ids) -> torch.Tensor:
    """A flat sequence (or 1-D tensor) of integer token ids -> int64 tensor; anything else (floats,
    even 2.0; strings; nesting; bools; values beyond int64) is refused, never truncated."""
    if isinstance(ids, (str, bytes)) or ids is None:
        raise InputError(f"token ids must be a sequence of integers, got {type(ids).__name__}")
    if isinstance(ids, torch.Tensor):
        if ids.dim() != 1 or ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.is_complex():
            raise InputError(f"token ids must be a 1-D integer tensor, got {ids.dim()}-D {ids.dtype}")
        return ids.to(torch.int64)
    try:
        items = list(ids)
    except TypeError:
        raise InputError(f"token ids must be a sequence of integers, got {type(ids).__name__}") from None
    for i, x in enumerate(items):
        if isinstance(x, torch.Tensor) and x.dim() == 0 and not (x.dtype.is_floating_point or x.dtype == torch.bool):
            x = items[i] = int(x)
        if isinstance(x, bool) or not isinstance(x, numbers.Integral):
            raise InputError(f"token ids must be integers: item {i} is {x!r} ({type(x).__name__})")
        if not -(2**63) <= int(x) < 2**63:
            raise InputError(f"token id {int(x)} (item {i}) is out of range")
    return torch.tensor([int(x) for x in items], dtype=torch.int64)


def _session_class(d: Path, manifest: dict) -> type[Session]:
    backend = manifest.get("backend")
    if backend not in _SESSIONS:
        raise ArtifactError(f"{d}: backend {backend!r} has no runtime here (known: {', '.join(_SESSIONS)})")
    return _SESSIONS[backend]


def load(artifact_dir: str | Path, *, threads: int | None = None) -> Session:
    """Open an artifact in the runtime its manifest names (checking every file's sha256)."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise InputError(f"threads must be a positive integer (or None for the runtime's default), got {threads!r}")
    d = Path(artifact_dir)
    manifest = read_manifest(d)
    return _session_class(d, manifest)(d, manifest, threads=threads)


def import_runtime(artifact_dir: str | Path) -> None:
    """Import and initialise the runtime an artifact needs (Session.import_runtime), loading no model."""
    d = Path(artifact_dir)
    manifest = read_manifest(d)
    _session_class(d, manifest).import_runtime(manifest)
