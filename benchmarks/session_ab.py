"""Prefill and decode speed of two or more artifacts, same run: fresh processes, rounds interleaved.

    python benchmarks/session_ab.py DIR [DIR ...] --name NAME [--rounds 3] [--contexts 128 1024]
                                    [--threads 2]

In each round every artifact runs once per context in a fresh process, in turn (so the machine's
drift falls on all alike): our Session loads it, prefills CTX random token ids (timed: the prompt
rate, in the artifact's own prefill chunks, after an untimed first chunk and a reset), then decodes
4 warm-up and 32 timed steps. Run each artifact once beforehand if its runtime packs weights into
a cache on first load (LiteRT's XNNPACK cache). Results: ``results/session_ab_<NAME>.{json,md,png}``:
medians (min–max) over rounds, and each artifact's median over rounds of its figure over the first
artifact's in the same round.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import report  # noqa: E402

CHILD = """
import json, random, sys, time
from gemma_edge.runtime_py import load
d, ctx, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = load(d, threads=threads)
vocab = s.manifest["config"]["vocab_size"]
rng = random.Random(0)
ids = [rng.randrange(3, vocab) for _ in range(ctx)]
s.prefill(ids[: s.prefill_chunk])  # untimed: the prefill signature's first call (allocation, page faults)
s.reset()
t = time.perf_counter(); s.prefill(ids); prefill = time.perf_counter() - t
for _ in range(4):
    s.decode(5)
t = time.perf_counter()
for _ in range(32):
    s.decode(5)
decode = time.perf_counter() - t
print(json.dumps({"prefill_tok_s": ctx / prefill, "decode_tok_s": 32 / decode}))
"""


def run_one(d: str, ctx: int, threads: int) -> dict:
    p = subprocess.run([sys.executable, "-c", CHILD, d, str(ctx), str(threads)], capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{d} at context {ctx} failed:\n{p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def stats(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def markdown(res: dict) -> str:
    lines = [f"# Same-run A/B ({res['threads']} threads, {res['rounds']} rounds, medians (min–max))", "",
             f"× first: the median over rounds of each round's figure over {next(iter(res['rows']))}'s.", "",
             "| artifact | context | prefill (tok/s) | × first | decode (tok/s) | × first |",
             "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for d, by_ctx in res["rows"].items():
        for c, r in by_ctx.items():
            cells = [f"{r[k]['median']:.1f} ({r[k]['min']:.1f}–{r[k]['max']:.1f}) | {r[k + '_x_first']:.2f}"
                     for k in ("prefill_tok_s", "decode_tok_s")]  # fmt: skip
            lines.append(f"| {d} | {c} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    names = list(res["rows"])
    for ax, key in zip(axes, ("prefill_tok_s", "decode_tok_s")):
        ctxs = list(res["rows"][names[0]])
        w = 0.8 / len(names)
        for i, d in enumerate(names):
            ax.bar([j + i * w for j in range(len(ctxs))], [res["rows"][d][c][key]["median"] for c in ctxs], w,
                   label=Path(d).name)  # fmt: skip
        ax.set_xticks([j + w * (len(names) - 1) / 2 for j in range(len(ctxs))], [f"context {c}" for c in ctxs])
        ax.set_title(key.replace("_tok_s", " (tok/s, median)"))
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dirs", nargs="+")
    p.add_argument("--name", required=True)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--contexts", type=int, nargs="+", default=[128, 1024])
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    for d in a.dirs:
        if not (Path(d) / "manifest.json").is_file():
            sys.exit(f"{d}: not an artifact directory (no manifest.json)")
        n = json.loads((Path(d) / "manifest.json").read_text())["max_seq_len"]
        if n < max(a.contexts) + 36:
            sys.exit(f"{d}: max_seq_len {n} cannot hold context {max(a.contexts)} and 36 decode steps")
    runs = {d: {c: [] for c in a.contexts} for d in a.dirs}
    for r in range(a.rounds):
        for d in a.dirs:
            for c in a.contexts:
                runs[d][c].append(run_one(d, c, a.threads))
                x = runs[d][c][-1]
                print(f"round {r + 1}/{a.rounds} {d} @{c}: prefill {x['prefill_tok_s']:.1f}, "
                      f"decode {x['decode_tok_s']:.1f} tok/s", flush=True)  # fmt: skip
    keys = ("prefill_tok_s", "decode_tok_s")
    first = runs[a.dirs[0]]
    rows = {d: {c: {k: stats([x[k] for x in xs]) for k in keys} | {"rounds": xs}
                # each round's figure over the first artifact's in the same round: drift cancels
                | {f"{k}_x_first": statistics.median(x[k] / f[k] for x, f in zip(xs, first[c])) for k in keys}
                for c, xs in by_ctx.items()} for d, by_ctx in runs.items()}  # fmt: skip
    res = {"threads": a.threads, "rounds": a.rounds, "contexts": a.contexts, "rows": rows}
    report.save(HERE / "results" / f"session_ab_{a.name}", res, markdown, plot)


if __name__ == "__main__":
    main()
