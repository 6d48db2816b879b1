"""Where an artifact's resident memory goes while it generates: a memory profile from /proc/self/smaps.

    python benchmarks/rss_breakdown.py ARTIFACT_DIR [ARTIFACT_DIR ...] [--threads 2] [--contexts 128 4096]
                                       [--name NAME]

Each artifact runs in a fresh process, as ``vs_llamacpp.py`` measures it: import the runtime, load
the artifact with our Session, then at each context prefill CTX random token ids and decode 36 steps.
The process's mappings are read before the load and after generating, and the RSS the model added is
split into: the artifact's own files (pages of the mapped model file), the runtime's packed-weight
cache files under ``$GEMMA_EDGE_CACHE`` (LiteRT's XNNPACK weight cache), the heap (brk), anonymous
mappings (mmap'd arenas) and the rest (thread stacks, shared libraries, other files). The peak
while generating is ``vs_llamacpp.py``'s "model RSS" (VmHWM, reset after the load).

Results: ``results/rss_<name>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import report  # noqa: E402

CHILD = """
import json, sys, torch
from pathlib import Path
from gemma_edge.runtime_py.bench import _reset_peak_rss, current_rss_mib, peak_rss_mib
from gemma_edge.runtime_py.kernels import cache_root
from gemma_edge.runtime_py.session import import_runtime, load

CACHE = str(cache_root().resolve())


def smaps(art):
    art = str(Path(art).resolve())
    groups, cur = {}, None
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
                path = head[5] if len(head) > 5 else ""
                cur = ("artifact files" if path.startswith(art) else "heap" if path == "[heap]"
                       else "anonymous" if path == "" else
                       "packed-weight cache files" if path.startswith(CACHE) and not path.endswith(".so")
                       else "stacks, libraries, other files")
            elif head[0] == "Rss:":
                groups[cur] = groups.get(cur, 0) + int(head[1]) / 1024
    return groups

d, threads, contexts = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
import_runtime(d)
before, base = smaps(d), current_rss_mib()
s = load(d, threads=threads)
after_load, load_rss = smaps(d), current_rss_mib() - base
_reset_peak_rss()
g = torch.Generator().manual_seed(0)
for ctx in contexts:
    s.reset()
    s.prefill(torch.randint(3, s.config.vocab_size, (ctx,), generator=g).tolist())
    for _ in range(36):
        s.decode(5)
end = smaps(d)
keys = sorted(set(before) | set(end))
delta = lambda a: {k: a.get(k, 0) - before.get(k, 0) for k in keys}
print(json.dumps({"after_load": delta(after_load), "generating": delta(end), "load_rss_mib": load_rss,
                  "peak_generating_mib": peak_rss_mib() - base}))
"""


def file_mib(d: Path) -> float:
    m = json.loads((d / "manifest.json").read_text())
    skip = ("tokenizer.model", "model.litertlm", "model.ort")
    return sum((d / f).stat().st_size for f in m["files"] if f not in skip and not f.endswith(".json")) / 2**20


def measure(d: Path, threads: int, contexts: list[int]) -> dict:
    p = subprocess.run([sys.executable, "-c", CHILD, str(d), str(threads), json.dumps(contexts)], cwd=ROOT,
                       capture_output=True, text=True)  # fmt: skip
    if p.returncode:
        sys.exit(f"{d}: the measuring process failed ({p.returncode}):\n{p.stderr[-3000:]}")
    res = json.loads(p.stdout.strip().splitlines()[-1])
    m = json.loads((d / "manifest.json").read_text())
    return {**res, "file_mib": file_mib(d), "backend": m["backend"], "recipe": m["recipe"]["name"]}


def markdown(res: dict) -> str:
    lines = [f"# Where the model's RSS goes ({res['threads']} threads, contexts {res['contexts']})", ""]
    for label, r in res["rows"].items():
        f = r["file_mib"]
        lines += [f"## {label}: {r['backend']} {r['recipe']}, model files {f:.1f} MiB", "",
                  f"Peak RSS the model added while generating: **{r['peak_generating_mib']:.1f} MiB "
                  f"({r['peak_generating_mib'] / f:.2f}× the file)**; after loading {r['load_rss_mib']:.1f} MiB.",
                  "", "| mappings | after load (MiB) | after generating (MiB) | × file |",
                  "|---|---:|---:|---:|"]  # fmt: skip
        for k in r["generating"]:
            lines.append(f"| {k} | {r['after_load'].get(k, 0):.1f} | {r['generating'][k]:.1f} | "
                         f"{r['generating'][k] / f:.2f} |")  # fmt: skip
        lines.append("")
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = res["rows"]
    labels = [f"{r['backend']} {r['recipe']}" for r in rows.values()]
    groups = sorted({k for r in rows.values() for k in r["generating"]})
    fig, ax = plt.subplots(figsize=(8, 4.5))
    bottom = [0.0] * len(rows)
    for k in groups:
        vals = [max(r["generating"].get(k, 0), 0) for r in rows.values()]
        ax.bar(labels, vals, bottom=bottom, label=k)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.scatter(labels, [r["file_mib"] * 1.3 for r in rows.values()], marker="_", s=900, color="k",
               label="1.3 × the model file", zorder=3)  # fmt: skip
    ax.set_ylabel("MiB the model added, after generating")
    ax.set_title(f"Resident memory by mapping ({res['threads']} threads, contexts {res['contexts']})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("artifacts", nargs="+", type=Path)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--contexts", type=int, nargs="+", default=[128, 4096])
    p.add_argument("--name", default=None, help="results/rss_NAME.{json,md} (default: print only)")
    a = p.parse_args()
    rows = {}
    for d in a.artifacts:
        if not (d / "manifest.json").is_file():
            sys.exit(f"{d}: not an artifact directory (no manifest.json)")
        print(f"measuring {d}…", flush=True)
        rows[str(d)] = measure(d, a.threads, a.contexts)
    res = {"threads": a.threads, "contexts": a.contexts, "rows": rows, "date": time.strftime("%Y-%m-%d %H:%M")}
    if not a.name:
        print(markdown(res))
    else:
        report.save(HERE / "results" / f"rss_{a.name}", res, markdown, plot)


if __name__ == "__main__":
    main()
