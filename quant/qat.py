"""Quantization-aware training by self-distillation (Gemma 3's QAT recipe, at small scale).

The student is the model with fake quantization inserted where the target backend's kernels
quantize, computed as they compute it; the teacher is a frozen copy of the fp32 model. The loss is
the KL divergence from the teacher's next-token distribution to the student's on the user's text.
After training the fake quantizers are removed again: the result is an fp32 model whose weights sit
where the backend's own round-to-nearest gives the trained codes, so it exports like any checkpoint
(``ptq="rtn"``, recorded with it: ``QAT_FILE``).

Fake quantization per (target, recipe):

* ``executorch`` ``8da4w``: torchao's ``QATConfig`` prepare/convert on the very config ExecuTorch's
  export quantizes with (quant/torchao_apply.py): int8 per-token asymmetric activations, int4
  symmetric weights in groups, torchao's max/7.5 scales.
* ``executorch`` ``int4`` and ``onnx`` ``int4`` (``+emb4``: the table too): weight-only int4 on the
  backend's grid and rule (codes -8..7, fp16 scales: ONNX's signed extreme / -8 of quant/nbits.py,
  our kernel's absmax / 8 of quant/ptq.py), with a
  straight-through gradient.

LiteRT is not offered: its 4-bit export also folds SmoothQuant scales into the norms and quantizes
activations per row, which this trainer does not model; a LiteRT QAT would train on the wrong grid.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from gemma_edge.models.errors import InputError

from .ptq import GRIDS, Grid
from .recipes import Recipe

__all__ = ["qat", "QATReport", "fake_quantize", "remove_fake_quant", "supported", "QAT_FILE", "SUPPORTED"]

QAT_FILE = "gemma_edge_qat.json"  # beside a QAT checkpoint: the recipe and grid it was trained for

# (target, recipe base) -> the grid export will use; the table follows with +emb4
SUPPORTED = {("executorch", "8da4w"): "torchao", ("executorch", "int4"): "executorch_kernel", ("onnx", "int4"): "onnx"}


def supported(target: str, recipe: Recipe) -> str:
    """The grid QAT trains for ``recipe`` on ``target``; an InputError naming what is offered if none."""
    key = (target, recipe.base)
    offered = ", ".join(f"{t}:{b}" for t, b in SUPPORTED)
    if key not in SUPPORTED:
        raise InputError(f"QAT for {recipe.name} on {target} is not offered; offered: {offered} (optionally +emb4)")
    if recipe.embedding_bits not in (None, 4):
        raise InputError(f"QAT for {recipe.name}: the table is trained for +emb4 only (or left fp32)")
    return SUPPORTED[key]


class _GridFakeQuant(nn.Module):
    """Round-to-nearest on ``grid`` in groups of ``group`` along the input dim, as the backend's own
    round-to-nearest does it; the gradient passes straight through to the latent weight. ``signed``:
    the scale is the group's extreme value (sign kept) / qmin, so it maps to -8 exactly
    (quant/nbits.py, ONNX Runtime's rule); otherwise absmax / grid.rtn_divisor."""

    def __init__(self, grid: Grid, group: int, signed: bool = False) -> None:
        super().__init__()
        self.grid, self.group, self.signed = grid, group, signed

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        N, K = w.shape
        g = w.reshape(N, K // self.group, self.group)
        gd = g.detach()
        if self.signed:
            s = gd.gather(-1, gd.abs().argmax(-1, keepdim=True)) / self.grid.qmin
        else:
            s = gd.abs().amax(-1, keepdim=True) / self.grid.rtn_divisor
        s = self.grid.round_scale(s)
        q = torch.clamp(torch.round(g / s), self.grid.qmin, self.grid.qmax) * s
        return (g + (q - g).detach()).reshape(N, K)


def _torchao_qat_config(recipe: Recipe):
    """torchao's QAT prepare config for the Int8DynamicActivationIntxWeightConfig that
    quantize_for_executorch applies: int8 asymmetric per-token activations, int4 symmetric weights
    in groups with bf16 scales (torchao derives no QAT config from a base config with a scale dtype)."""
    from torchao.quantization.granularity import PerGroup
    from torchao.quantization.qat import IntxFakeQuantizeConfig, QATConfig
    from torchao.quantization.quant_primitives import MappingType

    act = IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=False)
    weight = IntxFakeQuantizeConfig(torch.int4, PerGroup(recipe.group_size), mapping_type=MappingType.SYMMETRIC,
                                    scale_precision=torch.bfloat16)  # fmt: skip
    return QATConfig(activation_config=act, weight_config=weight, step="prepare")


def fake_quantize(model: nn.Module, recipe: Recipe, target: str) -> nn.Module:
    """Insert the fake quantization of ``recipe`` on ``target`` into ``model`` (in place)."""
    grid_name = supported(target, recipe)
    gs = recipe.group_size
    head = getattr(model, "lm_head", None)
    if grid_name == "torchao":
        from torchao.quantization import quantize_

        keep = lambda m, fqn: isinstance(m, nn.Linear) and m is not head and m.in_features % gs == 0  # noqa: E731
        quantize_(model, _torchao_qat_config(recipe), filter_fn=keep)
    else:
        grid = GRIDS[grid_name]
        for m in list(model.modules()):
            if isinstance(m, nn.Linear) and m is not head and m.in_features % gs == 0:
                parametrize.register_parametrization(m, "weight", _GridFakeQuant(grid, gs, signed=target == "onnx"))
    if recipe.embedding_bits == 4:  # ExecuTorch's stored table: torchao's grid (executorch_backend/table.py)
        table = _GridFakeQuant(GRIDS[target], gs, signed=target == "onnx")
        parametrize.register_parametrization(model.backbone.embed, "weight", table)
    return model


def remove_fake_quant(model: nn.Module) -> nn.Module:
    """The fp32 model again (latent weights), with every fake quantizer removed."""
    for m in list(model.modules()):
        if parametrize.is_parametrized(m):
            for name in list(m.parametrizations):
                parametrize.remove_parametrizations(m, name, leave_parametrized=False)
    from torchao.quantization.qat.linear import FakeQuantizedLinear

    if any(isinstance(m, FakeQuantizedLinear) for m in model.modules()):
        from torchao.quantization import quantize_
        from torchao.quantization.qat import QATConfig

        quantize_(model, QATConfig(step="convert"), filter_fn=lambda m, fqn: isinstance(m, FakeQuantizedLinear))
    return model


@dataclass
class QATReport:
    target: str
    recipe: str
    grid: str
    steps: int
    seq_len: int
    tokens: int
    lr: float
    wall_s: float = 0.0
    peak_rss_mib: float = 0.0  # the process's peak resident memory by the end of training
    history: list[dict] = field(default_factory=list)  # per eval: step, train KL, held-out KL / PPL / top-1

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _windows(ids: Sequence[int], seq_len: int, bos: int | None) -> torch.Tensor:
    """Non-overlapping windows of ``seq_len`` tokens (BOS first when given), as rows."""
    body = seq_len - (bos is not None)
    n = len(ids) // body
    if n == 0:
        raise InputError(f"QAT text has {len(ids)} tokens, fewer than one window of {seq_len}")
    rows = torch.tensor(list(ids[: n * body]), dtype=torch.long).reshape(n, body)
    if bos is not None:
        rows = torch.cat((torch.full((n, 1), bos, dtype=torch.long), rows), 1)
    return rows


def _kl(t_logits: torch.Tensor, s_logits: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of KL(teacher || student)."""
    t = F.log_softmax(t_logits.float(), -1)
    s = F.log_softmax(s_logits.float(), -1)
    return (t.exp() * (t - s)).sum(-1).mean()


@torch.no_grad()
def heldout(student: nn.Module, teacher: nn.Module, rows: torch.Tensor) -> dict:
    """KL to the teacher, perplexity and top-1 agreement of the student on held-out rows."""
    kl = nll = agree = n = 0.0
    for r in rows:
        x = r[None]
        s, t = student(x)[0, :-1].float(), teacher(x)[0, :-1].float()
        kl += _kl(t, s).item() * s.shape[0]
        nll += F.cross_entropy(s, r[1:], reduction="sum").item()
        agree += (s.argmax(-1) == t.argmax(-1)).sum().item()
        n += s.shape[0]
    return {"kl": kl / n, "ppl": math.exp(nll / n), "top1": agree / n}


def _checkpointed(model: nn.Module) -> Callable[[], None]:
    """Recompute each block's activations in the backward pass; returns the undo."""
    from torch.utils.checkpoint import checkpoint

    undo = []
    for layer in model.backbone.layers:
        orig = layer.forward
        layer.forward = lambda *a, _f=orig, **k: checkpoint(_f, *a, use_reentrant=False, **k)
        undo.append(layer)
    return lambda: [layer.__dict__.pop("forward", None) for layer in undo]


def _schedule(steps: int) -> Callable[[int], float]:
    """Linear warm-up over 10% of the steps, then cosine decay to 10% of the peak."""
    warm = max(1, steps // 10)
    return lambda i: (i + 1) / warm if i < warm else 0.1 + 0.45 * (1 + math.cos(math.pi * (i - warm) / max(1, steps - warm)))  # noqa: E501  # fmt: skip


def _student(model: nn.Module, recipe: Recipe, target: str) -> nn.Module:
    """A trainable copy with the fake quantization in; the table trains only with +emb4 (it is the
    tied head: left fp32, it stays the teacher's)."""
    student = copy.deepcopy(model).train().requires_grad_(True)
    if recipe.embedding_bits != 4:
        student.backbone.embed.weight.requires_grad_(False)
    return fake_quantize(student, recipe, target)


def qat(model: nn.Module, recipe: Recipe, train_ids: Sequence[int], *, target: str = "executorch", steps: int = 100,
        seq_len: int = 256, batch: int = 1, lr: float = 2e-5, eval_ids: Sequence[int] | None = None,
        eval_every: int = 25, bos: int | None = 2, seed: int = 0, grad_checkpoint: bool = True,
        progress: bool = True) -> tuple[nn.Module, QATReport]:  # fmt: skip
    """Fine-tune a copy of ``model`` with ``recipe``'s fake quantization on ``target`` to match the
    fp32 model's token distributions on ``train_ids``; return (fp32 student, report).

    Every trainable weight trains (norms too), with AdamW and ``_schedule``; ``eval_ids`` (never
    trained on) are scored every ``eval_every`` steps and at the end. In a torch.distributed process
    group (quant/qat_dist.py), both models are sharded with FSDP2 and each of the ``world`` processes
    trains on its share of every batch of ``batch`` rows: the same steps as one process."""
    from . import qat_dist

    rank, world = qat_dist.rank_world()
    if batch % world:
        raise InputError(f"batch {batch} must be a multiple of the {world} processes")
    grid = supported(target, recipe)
    if not model.config.causal:
        raise InputError("QAT distills next-token distributions: it needs a causal LM, not an encoder")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps must be a positive integer, got {steps!r}")
    rows = _windows(train_ids, seq_len, bos)
    held = _windows(eval_ids, seq_len, bos)[:4] if eval_ids else None
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    student = _student(model, recipe, target)
    undo = lambda: None  # noqa: E731
    if world > 1:
        qat_dist.shard(student, teacher, grad_checkpoint)
    elif grad_checkpoint:
        undo = _checkpointed(student)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(steps))
    report = QATReport(target, recipe.name, grid, steps, seq_len, steps * batch * (seq_len - 1), lr)
    g = torch.Generator().manual_seed(seed)
    from tqdm import tqdm

    def evaluate(step: int, **extra) -> None:
        if held is not None:
            report.history.append({"step": step, **extra, **heldout(student.eval(), teacher, held)})
            student.train()

    t0 = time.perf_counter()
    evaluate(0)
    progress = progress and rank == 0
    bar = tqdm(range(steps), desc="qat", unit="step", disable=not progress)
    for step in bar:
        x = rows[torch.randint(len(rows), (batch,), generator=g)[rank::world]]
        with torch.no_grad():
            t_logits = teacher(x)
        with torch.enable_grad():  # also when called under no_grad
            loss = _kl(t_logits, student(x))
            opt.zero_grad(set_to_none=True)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        tok_s = (step + 1) * x.numel() * world / (time.perf_counter() - t0)
        bar.set_postfix(kl=f"{loss.item():.4f}", tok_s=f"{tok_s:.0f}")
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            evaluate(step + 1, train_kl=loss.item())
            if report.history and progress:
                h = report.history[-1]
                bar.write(f"step {step + 1}: held-out KL {h['kl']:.4f}, PPL {h['ppl']:.2f}, top-1 {h['top1']:.3f}")
    report.wall_s = time.perf_counter() - t0
    import resource

    report.peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    undo()
    if world > 1:
        student = qat_dist.full_copy(student, _student(model, recipe, target))
    remove_fake_quant(student)
    return student.eval().requires_grad_(False), report
