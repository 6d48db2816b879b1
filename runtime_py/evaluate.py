"""Quality on real text: perplexity exactly as ``llama-perplexity`` computes it, and KL / top-1
agreement to the fp32 model, through an artifact's own runtime (or an eager model).

The scheme (llama.cpp ``tools/perplexity``, ``perplexity()`` with ``-c n_ctx``): the text is
tokenized once with BOS in front; chunk i is ``ids[i*n_ctx : (i+1)*n_ctx]`` with its first token
replaced by BOS, run from an empty state; the logits at positions ``first = n_ctx // 2`` up to
``n_ctx - 2`` score the next token (``n_ctx - 1 - first`` tokens per chunk). Perplexity is
``exp(mean NLL)`` over every scored token of every chunk; the ± is llama.cpp's estimate of its
standard error. KL is KL(fp32 || target) of the full next-token distributions at the same
positions, and top-1 the fraction of those positions where both pick the same token.

A Session yields those logits by prefilling the first ``first`` tokens and then decoding one token
at a time (each decode returns the logits of the position it was fed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from gemma_edge.models.errors import InputError

__all__ = ["chunks", "scored_logits_eager", "scored_logits_session", "evaluate", "markdown"]


def chunks(ids: Sequence[int], n_ctx: int, bos: int, max_chunks: int | None = None) -> list[list[int]]:
    """llama-perplexity's chunks: consecutive windows of ``n_ctx`` tokens, the first set to BOS."""
    if n_ctx < 4:
        raise InputError(f"n_ctx must be >= 4, got {n_ctx}")
    n = len(ids) // n_ctx
    if max_chunks is not None:
        if max_chunks < 1:
            raise InputError(f"chunks must be >= 1, got {max_chunks}")
        n = min(n, max_chunks)
    if n == 0:
        raise InputError(f"the text has {len(ids)} tokens, fewer than one chunk of n_ctx={n_ctx}")
    return [[bos, *ids[i * n_ctx + 1 : (i + 1) * n_ctx]] for i in range(n)]


@torch.no_grad()
def scored_logits_eager(model: nn.Module, chunk: list[int]) -> torch.Tensor:
    """Logits (n_ctx - 1 - first, vocab) of an eager CausalLM at the scored positions."""
    first = len(chunk) // 2
    h, _ = model.backbone(torch.tensor([chunk]), torch.arange(len(chunk)))
    return model.logits(h[0, first:-1]).float()


@torch.no_grad()
def scored_logits_session(session, chunk: list[int]) -> torch.Tensor:
    first = len(chunk) // 2
    session.reset()
    session.prefill(chunk[:first])
    return torch.stack([session.decode(t).float() for t in chunk[first:-1]])


def _score(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.double(), targets, reduction="none")  # NLL per position


def evaluate(target, ids: Sequence[int], *, reference: nn.Module | None = None, n_ctx: int = 512,
             max_chunks: int | None = None, bos: int = 2, progress: bool = True) -> dict:  # fmt: skip
    """Perplexity of ``target`` (a Session or an eager CausalLM) on ``ids``; with ``reference`` (the
    fp32 eager model), also its perplexity, KL(reference || target) and top-1 agreement."""
    from tqdm import tqdm

    is_session = not isinstance(target, nn.Module)
    if is_session and target.max_seq_len < n_ctx:
        raise InputError(f"n_ctx={n_ctx} exceeds the artifact's max_seq_len of {target.max_seq_len}")
    cs = chunks(ids, n_ctx, bos, max_chunks)
    nll, nll_ref, kl, agree = [], [], [], []
    bar = tqdm(cs, desc="eval", unit="chunk", disable=not progress)
    for c in bar:
        first = len(c) // 2
        targets = torch.tensor(c[first + 1 :])
        lg = scored_logits_session(target, c) if is_session else scored_logits_eager(target, c)
        nll.append(_score(lg, targets))
        if reference is not None:
            ref = scored_logits_eager(reference, c)
            nll_ref.append(_score(ref, targets))
            lp, lq = ref.double().log_softmax(-1), lg.double().log_softmax(-1)
            kl.append((lp.exp() * (lp - lq)).sum(-1))
            agree.append((ref.argmax(-1) == lg.argmax(-1)).double())
        all_nll = torch.cat(nll)
        bar.set_postfix(ppl=f"{math.exp(all_nll.mean().item()):.3f}")
    out = {"n_ctx": n_ctx, "chunks": len(cs), "scored_tokens": int(all_nll.numel()), **_ppl(all_nll, "")}
    out["chunk_ppl"] = [math.exp(x.mean().item()) for x in nll]
    if reference is not None:
        out.update(_ppl(torch.cat(nll_ref), "reference_"))
        out["ppl_ratio"] = out["ppl"] / out["reference_ppl"]
        k = torch.cat(kl)
        out.update(kl_mean=k.mean().item(), kl_p99=k.quantile(0.99).item(), top1=torch.cat(agree).mean().item())
    return out


def _ppl(nll: torch.Tensor, prefix: str) -> dict:
    # llama.cpp's uncertainty: ppl * sqrt(var(nll) / (N - 1)).
    n, m = nll.numel(), nll.mean().item()
    var = (nll.pow(2).mean() - nll.mean() ** 2).item()
    ppl = math.exp(m)
    return {f"{prefix}ppl": ppl, f"{prefix}ppl_err": ppl * math.sqrt(max(var, 0.0) / max(n - 1, 1))}


def markdown(res: dict, title: str) -> str:
    rows = [
        ("perplexity", f"{res['ppl']:.3f} ± {res['ppl_err']:.3f}"),
        ("chunks × scored tokens", f"{res['chunks']} × {res['scored_tokens'] // res['chunks']} (n_ctx {res['n_ctx']})"),
    ]
    if "reference_ppl" in res:
        rows += [
            ("fp32 perplexity", f"{res['reference_ppl']:.3f}"),
            ("perplexity ratio", f"{res['ppl_ratio']:.4f}"),
            ("KL(fp32 ‖ this), mean / p99", f"{res['kl_mean']:.4f} / {res['kl_p99']:.4f}"),
            ("top-1 agreement", f"{res['top1']:.4f}"),
        ]
    lines = [f"# {title}", "", "| metric | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows]]
    return "\n".join(lines) + "\n"
