"""Where an ExecuTorch decode step goes, per instruction: ExecuTorch's own event trace (ETDump).

    python benchmarks/profile_executorch_ops.py [DIR] [--context 128] [--steps 30] [--threads 2]

DIR is an exported causal-LM artifact (default: the one ``vs_llamacpp.py`` exports for the 270M).
The program runs under the runtime's ETDump profiler: a ``--context``-token prefill, then
``--steps`` decode steps at that position. Each instruction's time is read from the trace
(``executorch.devtools.Inspector``), summed per operator name over the decode steps and divided by
their number: ms per token per operator (XNNPACK's partitions show as ``DELEGATE_CALL``), against
the wall time of a step. Results: ``results/executorch_ops_<DIR name>.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

HERE = Path(__file__).parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import report  # noqa: E402


def profile(d: Path, context: int, steps: int, threads: int) -> dict:
    from executorch.devtools import Inspector
    from executorch.extension.pybindings.portable_lib import _load_for_executorch, _unsafe_reset_threadpool

    from gemma_edge.runtime_py.executorch_session import ExecuTorchSession

    manifest = json.loads((d / "manifest.json").read_text())
    if manifest.get("backend") != "executorch":
        raise SystemExit(f"{d} is not an ExecuTorch artifact (manifest backend {manifest.get('backend')!r})")
    ExecuTorchSession.import_runtime(manifest)  # the quantized and fused-op kernels it names
    _unsafe_reset_threadpool(threads)
    module = _load_for_executorch(str(d / manifest["model_file"]), enable_etdump=True)
    chunk = int(manifest.get("prefill_chunk", context))
    ids = [(i * 7919) % 200000 + 3 for i in range(context)]
    torch.set_num_threads(1)  # torch only copies outputs here; its OpenMP workers would spin on our cores
    runs = 0
    for s in range(0, context, chunk):
        part = ids[s : s + chunk]
        module.run_method("forward", (torch.tensor([part]), torch.tensor([s])))
        runs += 1
    wall = []
    for _ in range(steps):
        t0 = time.perf_counter()
        module.run_method("forward", (torch.tensor([[5]]), torch.tensor([context])))
        wall.append(time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.etdp"
        module.write_etdump_result_to_file(str(path))
        inspector = Inspector(etdump_path=str(path))
    per_op: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    # The "Execute" block holds one event per instruction, its times listed per execution in order:
    # the prefill's first, then the decode steps'.
    blocks = [b for b in inspector.event_blocks if b.name == "Execute"]
    for block in blocks:
        for ev in block.events:
            if ev.perf_data is None or ev.name in ("Method::execute", "Program::load_method"):
                continue
            times = ev.perf_data.raw[runs:]
            per_op[ev.name] += sum(times)
            counts[ev.name] += len(times)
    n = steps
    ops = sorted(({"op": k, "ms_per_token": v / n, "calls_per_token": counts[k] / n} for k, v in per_op.items()),
                 key=lambda r: -r["ms_per_token"])  # fmt: skip
    return {"artifact": str(d), "context": context, "steps": steps, "threads": threads,
            "wall_ms_per_token": statistics.median(wall) * 1e3, "ops": ops, "date": time.strftime("%Y-%m-%d %H:%M")}


def markdown(res: dict) -> str:
    wall = res["wall_ms_per_token"]
    lines = [f"# ExecuTorch decode step by instruction: {Path(res['artifact']).name}, context {res['context']}",
             "", f"{res['threads']} threads, {res['steps']} decode steps under ETDump; wall {wall:.2f} ms per step "
             "(median, profiler on). Events nest: an `OPERATOR_CALL` holds the named kernel it runs (ours show by "
             "name; ring_attention, registered boxed, does not), a `DELEGATE_CALL` the XNNPACK ops inside it.", "",
             "| instruction | ms / token | calls / token | of the wall step |", "|---|---:|---:|---:|"]  # fmt: skip
    for r in res["ops"][:25]:
        lines.append(f"| `{r['op']}` | {r['ms_per_token']:.3f} | {r['calls_per_token']:.0f} | "
                     f"{r['ms_per_token'] / wall:.1%} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = res["ops"][:12]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.barh([r["op"][:40] for r in top][::-1], [r["ms_per_token"] for r in top][::-1])
    ax.set_xlabel("ms per decode step")
    ax.set_title(f"ExecuTorch decode at context {res['context']} (wall {res['wall_ms_per_token']:.2f} ms)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = ROOT / "artifacts" / "vs_llamacpp" / "gemma3-270m" / "executorch"
    p.add_argument("artifact", nargs="?", default=str(default))
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    d = Path(a.artifact)
    res = profile(d, a.context, a.steps, a.threads)
    report.save(HERE / "results" / f"executorch_ops_{d.parent.name}_{d.name}_ctx{a.context}", res, markdown, plot)


if __name__ == "__main__":
    main()
