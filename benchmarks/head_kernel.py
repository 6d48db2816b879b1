"""The 4-bit tied head alone in ExecuTorch: ``gemma_edge::table_head`` (fp32 activations) against
``gemma_edge::table_head_a8`` (int8 activations, row-major table) and ``gemma_edge::tile8_head_a8``
(int8 activations, the table in tiles of 8 rows), one decode row, the real Gemma 3 270M's shape.

    python benchmarks/head_kernel.py [--rows 262144] [--dim 640] [--rounds 5] [--calls 20] [--name NAME]

Each op is one small ``.pte`` (a random table packed as ``+emb4`` stores it, groups of 32); for
each thread count, rounds alternate the ops, each timing ``--calls`` executions. Reported:
median ns per table row and the read rate (codes + fp16 scales per call over the median time).
Results: ``results/NAME.{json,md,png}`` (default ``head_kernel``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import report  # noqa: E402


class _A8(torch.nn.Module):
    def __init__(self, w, s):
        super().__init__()
        self.register_buffer("w", w)
        self.register_buffer("s", s)

    def forward(self, x):
        return torch.ops.gemma_edge.table_head_a8(x, self.w, self.s)


class _Tile8(_A8):
    def forward(self, x):
        return torch.ops.gemma_edge.tile8_head_a8(x, self.w, self.s)


class _F32(_A8):
    def forward(self, x):
        return torch.ops.gemma_edge.table_head(x, self.w, self.s, 4)


def methods(rows: int, dim: int):
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower
    from executorch.runtime import Runtime

    from gemma_edge.export.executorch_backend import ops as _ops  # noqa: F401  (the .out schemas)
    from gemma_edge.export.executorch_backend.table import pack_table, tile_rows
    from gemma_edge.runtime_py.kernels import load_executorch_kernels

    load_executorch_kernels()
    w, s = pack_table(torch.randn(rows, dim, generator=torch.Generator().manual_seed(0)), 4, 32)
    x = torch.randn(1, dim)
    out = {}
    ops = (("table_head (fp32 x)", _F32, (w, s)), ("table_head_a8 (int8 x)", _A8, (w, s)),
           ("tile8_head_a8 (int8 x, tiles of 8 rows)", _Tile8, tile_rows(w, s)))  # fmt: skip
    for name, cls, table in ops:
        ep = torch.export.export(cls(*table), (x,))
        cc = EdgeCompileConfig(_check_ir_validity=False)
        et = to_edge_transform_and_lower(ep, compile_config=cc).to_executorch()
        program = Runtime.get().load_program(et.buffer)
        out[name] = (program, program.load_method("forward"))  # the method needs its program alive
    return out, x, w.numel() + 2 * s.numel()


def markdown(res: dict) -> str:
    lines = [f"# The 4-bit head alone: {res['rows']} x {res['dim']}, one row of x ({res['rounds']} rounds)", "",
             "| op | threads | ns / table row | GB/s read |", "|---|---:|---:|---:|"]  # fmt: skip
    for r in res["results"]:
        lines.append(f"| {r['op']} | {r['threads']} | {r['ns_per_row']:.1f} | {r['gb_s']:.1f} |")
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    labels = [f"{r['op']}\n{r['threads']} thr" for r in res["results"]]
    ax.bar(range(len(labels)), [r["ns_per_row"] for r in res["results"]])
    ax.set_xticks(range(len(labels)), labels, fontsize=7)
    ax.set_ylabel("ns per table row (median)")
    ax.set_title("4-bit tied head, one decode row")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=262144)
    p.add_argument("--dim", type=int, default=640)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--name", default="head_kernel")
    a = p.parse_args()
    from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

    results = []
    for threads in (1, 2):
        _unsafe_reset_threadpool(threads)
        ms, x, nbytes = methods(a.rows, a.dim)
        # torch's OpenMP workers, woken by packing the table, spin on the same 2 cores: torch at one
        # thread while timing, as the ExecuTorch Session runs (without it 2 threads read like 1 here)
        torch.set_num_threads(1)
        times = {name: [] for name in ms}
        for _ in range(3):
            for _, m in ms.values():
                m.execute([x])  # warm: the table in memory, the pool started
        for r in range(a.rounds):
            for name, (_, m) in ms.items():
                for _ in range(a.calls):
                    t0 = time.perf_counter()
                    m.execute([x])
                    times[name].append(time.perf_counter() - t0)
            print(f"threads {threads} round {r + 1}: " + ", ".join(
                f"{n} {statistics.median(t) * 1e3:.2f} ms" for n, t in times.items()), flush=True)  # fmt: skip
        for name, t in times.items():
            med = statistics.median(t)
            results.append({"op": name, "threads": threads, "median_ms": med * 1e3, "ns_per_row": med / a.rows * 1e9,
                            "gb_s": nbytes / med / 1e9})  # fmt: skip
    res = {"rows": a.rows, "dim": a.dim, "rounds": a.rounds, "calls": a.calls, "results": results,
           "date": time.strftime("%Y-%m-%d %H:%M")}  # fmt: skip
    report.save(HERE / "results" / a.name, res, markdown, plot)


if __name__ == "__main__":
    main()
