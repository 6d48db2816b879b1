"""Quality of every recipe x backend on the real Gemma 3 270M, next to llama.cpp on the same weights.

    python benchmarks/quality.py [--only onnx:int4+emb4,executorch:8da4w+emb4] [--resume] [--no-llamacpp]

For each combination, as a user would run it (the CLI, one child process per step):
1. ``gemma-edge export REAL_270M --backend B --quant Q --group-size G`` (ExecuTorch with
   ``--ops fused``, which stores the tied table once) with verify on; when
   verify refuses the artifact the refusal is recorded and the export rerun with ``--no-verify`` so
   the artifact can still be scored.
2. ``gemma-edge eval ARTIFACT`` on Hamlet (llama-perplexity's scheme, ``--ctx 512 --chunks 8``):
   perplexity, KL and top-1 against the eager fp32 model, through the artifact's own runtime.
3. File bytes and bits per weight: 8 x bytes of the model file(s) (tokenizer and manifest left out)
   / 268,098,176 parameters (the tied table counted once). llama.cpp's bpw includes its GGUF
   metadata, about 0.19 bpw of vocabulary.
Then ``benchmarks/llamacpp.py``'s ``llamacpp_results()`` in the same run (cached build and GGUFs).

Results: results/quality_gemma3-270m.{json,md,png}. ``--resume`` keeps rows already in the JSON.
The whole sweep takes about two hours on 2 cores (GPTQ is ~2.5 min per 4-bit export, ExecuTorch's
lowering of the 270M several minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
OUT = HERE / "results" / "quality_gemma3-270m"
N_PARAMS = 268098176
OPS = {"executorch": "fused"}  # the tied table stored once needs our kernels (export/executorch_backend/table.py)
# backend -> [(recipe, group size)]
COMBOS = {
    "onnx": [("fp32", 32), ("int8", 32), ("int4+emb4", 32), ("int4+emb4", 64), ("int4", 32), ("8da4w+emb4", 32)],
    "executorch": [
        ("fp32", 32),
        ("8da8w", 32),
        ("8da4w+emb8", 32),
        ("8da4w+emb4", 32),
        ("8da4w", 32),
        ("int4+emb4", 32),
    ],
    "litert": [("fp32", 32), ("int8", 32), ("int4", 32), ("int4", 128)],
}


def key(backend: str, recipe: str, gs: int) -> str:
    return f"{backend}:{recipe}" + (f":g{gs}" if gs != 32 else "")


def cli(*args: str, log: Path) -> tuple[int, float]:
    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"$ gemma-edge {' '.join(args)}\n")
        f.flush()
        rc = subprocess.call([sys.executable, "-m", "gemma_edge.cli", *args], stdout=f, stderr=subprocess.STDOUT)
    return rc, time.perf_counter() - t0


def measure(src: Path, backend: str, recipe: str, gs: int, work: Path, threads: int) -> dict:
    art, log = work / key(backend, recipe, gs).replace(":", "_"), work / "log.txt"
    row = {"backend": backend, "recipe": recipe, "group_size": gs}
    row["ops"] = OPS.get(backend, "portable")
    exp = ["export", str(src), "--backend", backend, "--quant", recipe, "--group-size", str(gs), "--ops", row["ops"],
           "--max-seq-len", "512", "-o", str(art), "--overwrite"]  # fmt: skip
    rc, row["export_wall_s"] = cli(*exp, log=log)
    row["verify"] = "pass" if rc == 0 else None
    if rc != 0:
        tail = [ln for ln in log.read_text().splitlines() if "gemma-edge: error" in ln]
        row["verify"] = tail[-1].split("error: ", 1)[-1] if tail else f"export exited {rc}"
        rc, _ = cli(*exp, "--no-verify", log=log)
        if rc != 0:
            row["error"] = f"export --no-verify exited {rc} (see {log})"
            return row
    m = json.loads((art / "manifest.json").read_text())
    if m.get("parity"):
        row["parity"] = m["parity"]["results"]
    row["export_timings"] = m.get("export_timings")
    return score(art, row, log, "--threads", str(threads))


def score(art: Path, row: dict, log: Path, *eval_args: str) -> dict:
    """Bits per weight of an artifact and its ``gemma-edge eval`` figures, into ``row``."""
    files = [p for p in art.iterdir() if p.is_file() and p.name not in ("manifest.json", "tokenizer.model")]
    row["file_bytes"] = sum(p.stat().st_size for p in files)
    row["bpw"] = 8 * row["file_bytes"] / N_PARAMS
    rc, row["eval_wall_s"] = cli("eval", str(art), *eval_args, "-o", str(art / "eval"), log=log)
    if rc != 0:
        row["error"] = f"eval exited {rc} (see {log})"
        return row
    ev = json.loads((art / "eval" / "eval.json").read_text())
    row.update({k: ev[k] for k in ("ppl", "ppl_err", "reference_ppl", "ppl_ratio", "kl_mean", "kl_p99", "top1")})
    return row


def markdown(res: dict) -> str:
    lines = [f"Real Gemma 3 270M on {Path(res['text']).name}, {res['chunks']} x {res['ctx']} tokens "
             "(llama-perplexity's scheme); ratio = PPL / fp32 PPL; bpw = 8 x model-file bytes / parameters", "",
             "| format | recipe | PPL | ratio | KL vs fp32 | top-1 | file MiB | bpw | verify |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for r in res["rows"].values():
        if "ppl" not in r:
            lines.append(f"| {r['backend']} | {r['recipe']} | — | — | — | — | — | — | {r.get('error', '')} |")
            continue
        rec = r["recipe"] + (f" (g{r['group_size']})" if r["group_size"] != 32 else "")
        lines.append(
            f"| {r['backend']} | {rec} | {r['ppl']:.2f} | {r['ppl_ratio']:.3f} | {r['kl_mean']:.4f} | "
            f"{r['top1']:.3f} | {r['file_bytes'] / 2**20:.1f} | {r['bpw']:.2f} | {r['verify']} |"
        )
    lc = res.get("llamacpp")
    if lc:
        f32 = lc["formats"]["F32"]["ppl"]
        lines[0] += f"; llama.cpp rows: {res.get('llamacpp_run')}"
        for name, r in lc["formats"].items():
            kl = "—" if r["kl_mean"] is None else f"{r['kl_mean']:.4f}"
            top1 = "—" if r["top1"] is None else f"{r['top1']:.3f}"
            lines.append(
                f"| llama.cpp | {name} | {r['ppl']:.2f} | {r['ppl'] / f32:.3f} | {kl} | {top1} | "
                f"{r['file_bytes'] / 2**20:.1f} | {r['bpw']:.2f} | — |"
            )
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    marks = {"onnx": "o", "executorch": "s", "litert": "^"}
    colors = {"onnx": "tab:blue", "executorch": "tab:green", "litert": "tab:orange"}
    for r in res["rows"].values():
        if "ppl" in r and r["bpw"] < 12:
            ax.scatter(r["bpw"], r["ppl_ratio"], marker=marks[r["backend"]], color=colors[r["backend"]],
                       label=r["backend"])  # fmt: skip
            ax.annotate(
                r["recipe"] + (f" g{r['group_size']}" if r["group_size"] != 32 else ""),
                (r["bpw"], r["ppl_ratio"]),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
    lc = res.get("llamacpp")
    if lc:
        f32 = lc["formats"]["F32"]["ppl"]
        for name, r in lc["formats"].items():
            if r["bpw"] < 12:
                ax.scatter(r["bpw"], r["ppl"] / f32, marker="x", color="k", label="llama.cpp")
                ax.annotate(name, (r["bpw"], r["ppl"] / f32), fontsize=7, xytext=(3, -8), textcoords="offset points")
    ax.axhline(1.15, ls="--", lw=0.8, color="gray")
    ax.axvline(4.6, ls=":", lw=0.8, color="gray")
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    ax.legend(uniq.values(), uniq.keys())
    ax.set_xlabel("bits per weight (model file)")
    ax.set_ylabel("perplexity / fp32 perplexity")
    ax.set_title("Gemma 3 270M on Hamlet: quality against size (floor: 1.15x at <= 4.6 bpw)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    from gemma_edge import fixtures

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", help="comma-separated backend:recipe[:gG] keys")
    p.add_argument("--resume", action="store_true", help="keep rows already in the results JSON")
    p.add_argument("--no-llamacpp", action="store_true", help="keep the llama.cpp rows of the results JSON")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", help="artifact directory (default: a temporary one, removed)")
    a = p.parse_args()
    src, text = fixtures.real_gemma3_270m(), fixtures.text("hamlet")
    old = json.loads(OUT.with_suffix(".json").read_text()) if OUT.with_suffix(".json").exists() else {}
    res = {"model": "google/gemma-3-270m (base), weights of the Q4_K_M GGUF fixture", "text": str(text),
           "chunks": 8, "ctx": 512, "threads": a.threads, "n_params": N_PARAMS,
           "rows": dict(old.get("rows", {})) if (a.resume or a.only) else {}}  # fmt: skip
    lc_file = HERE / "results" / "llamacpp_gemma3-270m.json"
    if a.no_llamacpp and "llamacpp" in old:
        res["llamacpp"], res["llamacpp_run"] = old["llamacpp"], old.get("llamacpp_run")
    elif a.no_llamacpp and lc_file.exists():  # not this run: say so in the results
        res["llamacpp"], res["llamacpp_run"] = json.loads(lc_file.read_text()), f"earlier run ({lc_file.name})"
    todo = [(b, r, g) for b, rs in COMBOS.items() for r, g in rs]
    if a.only:
        want = set(a.only.split(","))
        todo = [c for c in todo if key(*c) in want]
        if len(todo) != len(want):
            sys.exit(
                f"--only: unknown keys {sorted(want - {key(*c) for c in todo})}; known: "
                + ", ".join(key(*c) for b, rs in COMBOS.items() for c in [(b, r, g) for r, g in rs])
            )
    if a.resume:
        todo = [c for c in todo if "ppl" not in res["rows"].get(key(*c), {})]
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="gemma-edge-quality-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    for i, c in enumerate(todo, 1):
        print(f"[{i}/{len(todo)}] {key(*c)} …", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        row = res["rows"][key(*c)] = measure(src, *c, work, a.threads)
        got = f"ppl {row['ppl']:.2f} (x{row['ppl_ratio']:.3f}), {row['bpw']:.2f} bpw" if "ppl" in row else row["error"]
        print(f"      {got}; verify: {row['verify']} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
        OUT.with_suffix(".json").write_text(json.dumps(res, indent=1, ensure_ascii=False) + "\n")
    if not a.no_llamacpp:
        from llamacpp import llamacpp_results

        print("llama.cpp (same run) …", file=sys.stderr, flush=True)
        res["llamacpp"] = llamacpp_results(8, 512, a.threads)
        res["llamacpp_run"] = f"measured in the run of {time.strftime('%Y-%m-%d')}"  # stays true when rows are kept
    OUT.with_suffix(".json").write_text(json.dumps(res, indent=1, ensure_ascii=False) + "\n")
    OUT.with_suffix(".md").write_text(markdown(res))
    plot(res, OUT.with_suffix(".png"))
    print(markdown(res))
    print(f"wrote {OUT}.{{json,md,png}} (artifacts and logs in {work})", file=sys.stderr)


if __name__ == "__main__":
    main()
