"""PTQ vs QAT on the real Gemma 3 270M, ExecuTorch 8da4w, measured on the exported artifacts.

    python benchmarks/qat.py [--steps 320] [--lr 5e-5] [--seq-len 256] [--work DIR] [--resume]

As a user would run it (the CLI, one child process per step, log in WORK/log.txt):
1. ``gemma-edge qat REAL_270M --backend executorch --quant 8da4w --steps N`` on the default corpus
   (King Lear, The Tempest, Macbeth), held-out text Hamlet (never trained on).
2. Three exports of ``--backend executorch --quant 8da4w --ops fused``: PTQ by round-to-nearest
   (torchao's rule, what the QAT's fake quantizers compute), PTQ by GPTQ (our default), and the QAT
   checkpoint (round-to-nearest on its own grid, as export does for it), each verified.
3. ``gemma-edge eval ARTIFACT`` on Hamlet (``--ctx 512 --chunks 8``, quality.py's scheme) against the
   fp32 teacher: perplexity, KL, top-1, through ExecuTorch itself.
Recovery = (PPL_ptq - PPL_qat) / (PPL_ptq - PPL_fp32): the share of PTQ's perplexity gap QAT wins back.

Results: results/qat_gemma3-270m.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import report  # noqa: E402
from quality import cli, score  # noqa: E402

OUT = HERE / "results" / "qat_gemma3-270m"


def export_and_eval(src: Path, art: Path, ptq: str | None, teacher: Path, log: Path) -> dict:
    exp = ["export", str(src), "--backend", "executorch", "--quant", "8da4w", "--ops", "fused", "--max-seq-len", "512",
           "-o", str(art), "--overwrite"] + (["--ptq", ptq] if ptq else [])  # fmt: skip
    rc, wall = cli(*exp, log=log)
    row = {"export_wall_s": wall, "verify": "pass" if rc == 0 else f"export exited {rc} (see {log})"}
    if rc != 0:
        return row
    m = json.loads((art / "manifest.json").read_text())
    row["ptq"] = m["recipe"]["ptq"]
    return score(art, row, log, "--reference", str(teacher))


def markdown(res: dict) -> str:
    q = res["qat"]
    lines = [
        f"Real Gemma 3 270M, ExecuTorch 8da4w (--ops fused), Hamlet {res['chunks']} x {res['ctx']} (held out), "
        f"fp32 PPL {res['fp32_ppl']:.2f}. QAT: {q['steps']} steps x {q['seq_len']} tokens ({q['tokens']:,} "
        f"tokens of {', '.join(q['texts']['train'])}), lr {q['lr']}, {q['wall_s'] / 60:.0f} min on 2 cores.", "",
        "| artifact | PTQ | PPL | ratio | KL vs fp32 | top-1 | bpw | verify |", "|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for name, r in res["rows"].items():
        if "ppl" not in r:
            lines.append(f"| {name} | | | | | | | {r.get('error') or r['verify']} |")
            continue
        lines.append(f"| {name} | {r['ptq']} | {r['ppl']:.2f} ± {r['ppl_err']:.2f} | {r['ppl_ratio']:.3f}x | "
                     f"{r['kl_mean']:.4f} | {r['top1']:.3f} | {r['bpw']:.2f} | {r['verify']} |")  # fmt: skip
    lines += ["", "Recovery of PTQ's perplexity gap by QAT (PPL_ptq - PPL_qat) / (PPL_ptq - PPL_fp32):"]
    for k, v in res["recovery"].items():
        lines.append(f"- vs {k}: {v:.0%}")
    lines += ["", "Held-out KL during training (eager, fake-quantized student, 4 x 256 tokens of Hamlet):", ""]
    lines.append(" ".join(f"{h['step']}: {h['kl']:.3f}" for h in q["history"]))
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = res["qat"]["history"]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([x["step"] for x in h], [x["kl"] for x in h], marker="o", label="QAT student (eager, held out)")
    for name, r in res["rows"].items():
        if "kl_mean" in r:
            ax.axhline(r["kl_mean"], ls="--", color={"PTQ rtn": "C3", "PTQ gptq": "C2"}.get(name, "C1"),
                       label=f"{name} artifact, Hamlet 8 x 512")  # fmt: skip
    ax.set_xlabel("QAT step")
    ax.set_ylabel("KL(fp32 || quantized)")
    ax.set_title("Gemma 3 270M, ExecuTorch 8da4w: PTQ vs QAT")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=320)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--work", default=str(Path.home() / ".cache" / "gemma_edge" / "qat_bench"))
    ap.add_argument("--resume", action="store_true", help="keep a finished QAT checkpoint and rows already done")
    args = ap.parse_args()
    from gemma_edge import fixtures

    src = fixtures.real_gemma3_270m()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    log, ck = work / "log.txt", work / "qat_8da4w"
    prev = json.loads(OUT.with_suffix(".json").read_text()) if args.resume and OUT.with_suffix(".json").exists() else {}
    if not (args.resume and (ck / "gemma_edge_qat.json").exists()):
        import shutil

        shutil.rmtree(ck, ignore_errors=True)
        rc, _ = cli("qat", str(src), "--backend", "executorch", "--quant", "8da4w", "--steps", str(args.steps),
                    "--lr", str(args.lr), "--seq-len", str(args.seq_len), "--eval-every", "40", "-o", str(ck),
                    log=log)  # fmt: skip
        if rc != 0:
            sys.exit(f"qat exited {rc}; see {log}")
    res = {"model": "google/gemma-3-270m (base), weights of the Q4_K_M GGUF fixture", "ctx": 512, "chunks": 8,
           "qat": json.loads((ck / "gemma_edge_qat.json").read_text()), "rows": prev.get("rows", {})}  # fmt: skip
    for name, source, ptq in [("PTQ rtn", src, "rtn"), ("PTQ gptq", src, "gptq"), ("QAT", ck, None)]:
        if name in res["rows"] and "ppl" in res["rows"][name] and name != "QAT":
            continue
        print(f"{name}: export + eval", flush=True)
        res["rows"][name] = export_and_eval(source, work / name.replace(" ", "_"), ptq, src, log)
        OUT.with_suffix(".json").write_text(json.dumps(res, indent=2))
    rows = res["rows"]
    res["fp32_ppl"] = next(r["reference_ppl"] for r in rows.values() if "reference_ppl" in r)
    res["recovery"] = {
        k: (rows[k]["ppl"] - rows["QAT"]["ppl"]) / (rows[k]["ppl"] - res["fp32_ppl"])
        for k in ("PTQ rtn", "PTQ gptq") if "ppl" in rows.get(k, {}) and "ppl" in rows.get("QAT", {})
    }  # fmt: skip
    report.save(OUT, res, markdown, plot)


if __name__ == "__main__":
    main()
