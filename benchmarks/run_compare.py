"""ONNX Runtime, onnxruntime-genai's model builder, ExecuTorch and LiteRT on one checkpoint, one run.

    python benchmarks/run_compare.py gemma3-1b --max-seq-len 4224

1. transformers writes a random <preset>-shaped checkpoint (bf16) to artifacts/hf_<preset>
   (transformers is a test dependency: ``pip install -e '.[test]'``).
2. Each export runs in its own child process (wall time, peak RSS): ours to ONNX (``--quant``,
   ``--ops``, verified), onnxruntime-genai's builder (int4, block 32, symmetric, accuracy level 4,
   CPU: the floor), ours to ExecuTorch (``--et-quant``, fused; unless ``--no-executorch``) and ours
   to LiteRT (``--litert-quant``; unless ``--no-litert``). The LiteRT child's peak RSS is the
   conversion memory (verify off there, so the figure is the conversion's alone).
3. Each artifact is benchmarked in a fresh child process with the same prompts, contexts, threads
   and repeats (``gemma-edge bench`` for ours, ``genai_bench.bench`` for the builder's model).

Results: results/compare_<preset>.{json,md,png}. Speed figures are medians; compare
within one run only.
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
ROOT = HERE.parent


def child(code: str, label: str) -> dict:
    """Run ``code`` in a fresh interpreter; it may write a JSON result to the path in RESULT."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        result = Path(f.name)
    t0 = time.perf_counter()
    prelude = f"import json, sys, time; sys.path.insert(0, {str(HERE)!r}); RESULT = {str(result)!r}\n"
    proc = subprocess.Popen([sys.executable, "-c", prelude + code], cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS
    if os.waitstatus_to_exitcode(status):
        sys.exit(f"{label} failed with exit code {os.waitstatus_to_exitcode(status)}")
    out = json.loads(result.read_text() or "{}")
    result.unlink()
    out.update({"wall_s": time.perf_counter() - t0, "process_peak_rss_mib": usage.ru_maxrss / 1024})
    print(f"{label}: {out['wall_s']:.0f} s", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("preset")
    p.add_argument("--quant", default="8da4w+emb4", help="our ONNX recipe (8da4w = int4 at accuracy level 4)")
    p.add_argument("--ops", default="fused")
    p.add_argument("--et-quant", default="8da4w+emb4")
    p.add_argument("--max-seq-len", type=int, default=4224)
    p.add_argument("--profile", default="phone-mid")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--litert-quant", default="int4")
    p.add_argument("--no-executorch", action="store_true")
    p.add_argument("--no-litert", action="store_true")
    p.add_argument("--skip-export", action="store_true", help="benchmark the kept artifacts again")
    p.add_argument(
        "--export-only", help="comma list (onnx,genai_builder,executorch,litert): export these again, keep the rest"
    )
    args = p.parse_args()
    redo = set(args.export_only.split(",")) if args.export_only else None
    want = lambda k: redo is None or k in redo  # noqa: E731
    art = ROOT / "artifacts"
    ckpt = art / f"hf_{args.preset}"
    ours = art / f"onnx_{args.preset}_{args.quant.replace('+', '-')}_{args.ops}"
    genai = art / f"genai-builder_{args.preset}_int4-acc4"
    et = art / f"executorch_{args.preset}_{args.et_quant.replace('+', '-')}_fused_hf"
    lite = art / f"litert_{args.preset}_{args.litert_quant}_portable"
    name = f"compare_{args.preset}"
    exports = {}
    if not args.skip_export:
        if not (ckpt / "config.json").exists():
            child(
                f"sys.path.insert(0, {str(ROOT / 'tests')!r}); import hf_checkpoints, torch; from pathlib import Path\n"
                f"hf_checkpoints.write_causal({args.preset!r}, Path({str(ckpt)!r}), dtype=torch.bfloat16)",
                "write checkpoint",
            )
        exp = (
            "from gemma_edge import models; from gemma_edge.export import export\n"
            "t0 = time.perf_counter(); log = lambda s: print(f'{{time.perf_counter() - t0:7.1f}}s {{s}}', flush=True)\n"
            "export(models.load({ck!r}), {be!r}, {q!r}, {n}, {ops!r}, {out!r}, overwrite=True, inplace=True,"
            " verify={v}, reference=lambda: models.load({ck!r}), source={ck!r}, progress=log)"
        )
        if want("onnx"):
            exports["onnx"] = child(
                exp.format(
                    ck=str(ckpt), be="onnx", q=args.quant, n=args.max_seq_len, ops=args.ops, out=str(ours), v=True
                ),
                "export to ONNX",
            )
        if want("genai_builder"):
            exports["genai_builder"] = child(
                "import shutil, genai_bench; from pathlib import Path\n"
                f"shutil.rmtree({str(genai)!r}, ignore_errors=True)\n"
                f"genai_bench.build(Path({str(ckpt)!r}), Path({str(genai)!r}))",
                "onnxruntime-genai builder",
            )
        for key, backend, quant, ops_mode, out_dir, skip, label in (
            ("executorch", "executorch", args.et_quant, "fused", et, args.no_executorch, "export to ExecuTorch"),
            ("litert", "litert", args.litert_quant, "portable", lite, args.no_litert, "convert to LiteRT"),
        ):  # verify off: the child's peak is the export's own (tests verify these backends)
            if not skip and want(key):
                exports[key] = child(
                    exp.format(
                        ck=str(ckpt), be=backend, q=quant, n=args.max_seq_len, ops=ops_mode, out=str(out_dir), v=False
                    ),
                    label,
                )
    bench = (
        "from gemma_edge.runtime_py.bench import benchmark\n"
        "json.dump(benchmark({d!r}, {prof!r}, repeats={r}), open(RESULT, 'w'), default=str)"
    )
    runs = {"onnx": child(bench.format(d=str(ours), prof=args.profile, r=args.repeats), "bench ONNX (ours)")}
    runs["genai_builder"] = child(
        "import genai_bench; from pathlib import Path; from gemma_edge import models\n"
        "from gemma_edge.runtime_py.profiles import apply_profile, get_profile\n"
        f"a = apply_profile(get_profile({args.profile!r})); cfg = models.read_config({str(ckpt)!r})\n"
        f"res = genai_bench.bench(Path({str(genai)!r}), a['threads_used'], {args.max_seq_len}, cfg.vocab_size,"
        f" repeats={args.repeats})\n"
        "json.dump(res, open(RESULT, 'w'))",
        "bench onnxruntime-genai builder",
    )
    if not args.no_executorch:
        runs["executorch"] = child(bench.format(d=str(et), prof=args.profile, r=args.repeats), "bench ExecuTorch")
    if not args.no_litert:
        runs["litert"] = child(bench.format(d=str(lite), prof=args.profile, r=args.repeats), "bench LiteRT")
    res = {"preset": args.preset, "checkpoint": str(ckpt), "quant": args.quant, "ops": args.ops,
           "et_quant": args.et_quant, "litert_quant": args.litert_quant, "max_seq_len": args.max_seq_len,
           "profile": args.profile,
           "exports": exports, "runs": runs}  # fmt: skip
    out = HERE / "results" / name
    if (args.skip_export or redo) and out.with_suffix(".json").exists():  # keep the figures of kept exports
        res["exports"] = {**json.loads(out.with_suffix(".json").read_text())["exports"], **exports}
    out.with_suffix(".json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    md = markdown(res)
    out.with_suffix(".md").write_text(md)
    plot(res, out.with_suffix(".png"))
    print(md)


LABELS = {
    "onnx": "ONNX Runtime (gemma-edge)",
    "genai_builder": "onnxruntime-genai builder",
    "executorch": "ExecuTorch (gemma-edge)",
    "litert": "LiteRT (gemma-edge)",
}


def _m(st: dict | None, digits: int = 1) -> str:
    return "—" if not st else f"{st['median']:.{digits}f} ({st['min']:.{digits}f}–{st['max']:.{digits}f})"


def markdown(res: dict) -> str:
    runs = res["runs"]
    cols = [k for k in LABELS if k in runs]
    any_run = runs["onnx"]
    lines = [
        f"# {res['preset']}-shaped (random init): ONNX Runtime, onnxruntime-genai's builder, ExecuTorch, LiteRT",
        "",
        f"One transformers-written checkpoint (`{Path(res['checkpoint']).name}`), profile `{res['profile']}`, "
        f"max_seq_len {res['max_seq_len']}, medians (min–max) of the repeats, all from one run. Ours: "
        f"`{res['quant']}` with `--ops {res['ops']}`; builder: int4, block 32, symmetric, accuracy level 4; "
        f"ExecuTorch: `{res['et_quant']}`, fused ops; LiteRT: `{res.get('litert_quant')}` (ai-edge-quantizer "
        "dynamic int4, block 32), Interpreter signature runners.",
        "",
        "| metric | " + " | ".join(LABELS[c] for c in cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for n in any_run.get("prefill_tok_s", {}):
        lines.append(
            f"| prefill {n} tokens (tok/s) | " + " | ".join(_m(runs[c]["prefill_tok_s"].get(n)) for c in cols) + " |"
        )
    for n in any_run.get("decode_tok_s", {}):
        lines.append(
            f"| decode at context {n} (tok/s) | " + " | ".join(_m(runs[c]["decode_tok_s"].get(n)) for c in cols) + " |"
        )
    lines.append(
        "| peak RSS while benchmarking (MiB) | " + " | ".join(f"{runs[c]['peak_rss_mib']:.0f}" for c in cols) + " |"
    )
    lines.append(
        "| model files (MiB) | " + " | ".join(f"{runs[c]['model_file_bytes'] / 2**20:.0f}" for c in cols) + " |"
    )
    added = {
        c: (runs[c]["model_rss_mib"], runs[c]["model_rss_mib"] * 2**20 / runs[c]["model_file_bytes"]) for c in cols
    }
    lines.append(
        "| RSS added by the model, peak (MiB; × model files) | "
        + " | ".join(f"{added[c][0]:.0f} ({added[c][1]:.2f}×)" for c in cols)
        + " |"
    )
    roof = any_run.get("roofline", {})
    if roof:
        lines.append(
            "| decode roofline fraction at 128 (ours) | "
            + " | ".join(f"{100 * runs[c]['roofline'][next(iter(runs[c]['roofline']))]['fraction']:.0f}%"
                         if "roofline" in runs[c] else "—" for c in cols) + " |"
        )  # fmt: skip
    exp = res.get("exports") or {}
    if exp:
        lines += ["", "| export | wall (s) | peak RSS (GiB) |", "|---|---|---|"]
        for k, e in exp.items():
            lines.append(f"| {LABELS[k]} | {e['wall_s']:.0f} | {e['process_peak_rss_mib'] / 1024:.1f} |")
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = res["runs"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for k, r in runs.items():
        for ax, key in zip(axes, ("prefill_tok_s", "decode_tok_s")):
            xs = list(r.get(key, {}))
            ax.plot([str(x) for x in xs], [r[key][x]["median"] for x in xs], "o-", label=LABELS[k])
    axes[0].set(title="prefill", xlabel="prompt tokens", ylabel="tok/s")
    axes[1].set(title="decode", xlabel="context", ylabel="tok/s")
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(f"{res['preset']}-shaped, {res['profile']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
