"""Decode speed and memory of our three formats against llama.cpp: same weights, same run.

    python benchmarks/vs_llamacpp.py [--model gemma3-270m|gemma3-1b] [--rounds 3] [--threads 2]
                                     [--contexts 128 4096] [--skip-export]

1. llama.cpp is built from the ``llama-cpp-python`` sdist on the package registry and cached
   outside the repository (``llamacpp.build``: ``$GEMMA_EDGE_CACHE/llama.cpp/``).
2. The same checkpoint becomes GGUFs: for ``gemma3-270m`` (the real model) ``llamacpp.make_ggufs``
   (F32 by llama.cpp's own converter from the dequantized fixture, then ``llama-quantize``); for
   ``gemma3-1b`` a random gemma3-1b-shaped checkpoint written by transformers
   (``artifacts/hf_gemma3-1b``) through ``convert_hf_to_gguf.py``. Formats: Q4_0 ``--pure`` (every
   tensor 4-bit, the table and head too), Q4_0 (llama-quantize's default mix: Q8_0 table/head) and Q8_0.
3. Ours, exported from the same source in child processes: ExecuTorch ``8da4w+emb4 --ops fused
   --kv-cache q8`` (llama.cpp's Q8_0 blocks; llama.cpp is timed with its default fp16 caches and,
   on its own row, with ``-ctk q8_0 -ctv q8_0 -fa 1``),
   ONNX ``8da4w+emb4 --ops fused``, LiteRT ``int4``; ``max_seq_len`` 4224 so that 4K fits (the
   random gemma3-1b with ``--ptq rtn``: no quality to keep, the same bytes to decode).
4. ``--rounds`` rounds; in each, every format runs once in a fresh process, in turn (interleaved, so
   the machine's drift falls on all alike): llama-bench ``-p 0 -n 32 -d CTX -r 1`` (decode 32 tokens
   after a CTX-token context), and our Session prefilling CTX random tokens, four warm-up steps,
   then 32 timed decode steps; and LiteRT-LM's own ``Benchmark`` on the LiteRT export's
   ``model.litertlm`` (prefill CTX tokens, decode 32). Peak RSS of each process (``ru_maxrss``); for
   ours also the RSS the model adds over the imported runtime while generating and while loading
   (the ``bench`` figures). Token ids in and out: our Session loads the tokenizer on first text.

Results: ``results/vs_llamacpp_<model>.{json,md,png}``: medians over rounds and each format's ratio
to llama.cpp Q4_0 ``--pure`` and Q4_0 at each context.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import llamacpp  # noqa: E402
import report  # noqa: E402

OURS = {
    "ExecuTorch 8da4w+emb4 fused": ["--backend", "executorch", "--quant", "8da4w+emb4", "--ops", "fused", "--kv-cache",
                                    "q8"],
    # 8da4w on ONNX too (MatMulNBits accuracy_level 4: int8 activations, as llama.cpp's Q4_0 x Q8_0 dot
    # and our ExecuTorch head): 1.1-1.35x the decode of int4+emb4 on the 270M, Hamlet PPL 53.87 against 53.95
    "ONNX 8da4w+emb4 fused": ["--backend", "onnx", "--quant", "8da4w+emb4", "--ops", "fused"],
    "LiteRT int4": ["--backend", "litert", "--quant", "int4"],
}
LLAMA = {"llama.cpp Q4_0 --pure": ("Q4_0", ["--pure"]), "llama.cpp Q4_0": ("Q4_0", []), "llama.cpp Q8_0": ("Q8_0", [])}
# Rows that time one of LLAMA's GGUFs with other llama-bench flags: (the GGUF's label, flags).
REFS = ("llama.cpp Q4_0 --pure", "llama.cpp Q4_0 --pure, KV q8_0", "llama.cpp Q4_0")  # the ratio columns
LLAMA_RUNS = {"llama.cpp Q4_0 --pure, KV q8_0": ("llama.cpp Q4_0 --pure", ["-ctk", "q8_0", "-ctv", "q8_0", "-fa", "1"])}
MAX_SEQ_LEN = 4224
DECODE_STEPS = 32


def log(msg: str) -> None:
    print(msg, flush=True)


def peak_rss_child(cmd: list[str], **kw) -> tuple[str, float]:
    """stdout of ``cmd`` and the child's own peak RSS in MiB; exit on failure.

    Linux starts a child's ru_maxrss at its parent's high-water mark (the forked copy of the parent's
    memory is the "old mm" its exec replaces), so a child of this process, which converted GGUFs
    through transformers, would report at least that. GNU time, exec'd fresh, forks the command from
    its own small image: its %M is the command's own peak. Without it, wait4's figure is kept."""
    timer = os.path.exists("/usr/bin/time")
    with tempfile.TemporaryFile("w+") as so, tempfile.TemporaryFile("w+") as se, \
            tempfile.NamedTemporaryFile("r") as peak:  # fmt: skip
        wrap = ["/usr/bin/time", "-f", "%M", "-o", peak.name] if timer else []
        p = subprocess.Popen([*wrap, *(str(c) for c in cmd)], stdout=so, stderr=se, text=True, **kw)
        _, status, usage = os.wait4(p.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        so.seek(0), se.seek(0)
        out, err = so.read(), se.read()
        lines = peak.read().split() if timer else []
    if code:
        sys.exit(f"{shlex.join(map(str, cmd))} failed ({code}):\n{err[-3000:]}")
    kib = int(lines[-1]) if lines and lines[-1].isdigit() else usage.ru_maxrss
    return out, kib / 1024


def ggufs_for(model: str, bins: Path, src: Path, root: Path, threads: int) -> tuple[dict[str, Path], str]:
    """label -> GGUF path, and the source our exports read (the same weights)."""
    from gemma_edge import fixtures

    if model == "gemma3-270m":
        made = llamacpp.make_ggufs(src, bins, root, fixtures.real_gemma3_270m(), threads)
        names = {"llama.cpp Q4_0 --pure": "Q4_0 --pure", "llama.cpp Q4_0": "Q4_0", "llama.cpp Q8_0": "Q8_0"}
        return with_runs({k: made[v]["path"] for k, v in names.items()}), str(fixtures.real_gemma3_270m())
    ckpt = ROOT / "artifacts" / f"hf_{model}"
    if not (ckpt / "config.json").is_file():
        log(f"writing a random {model}-shaped checkpoint with transformers to {ckpt}…")
        code = (f"import sys, torch; sys.path.insert(0, {str(ROOT / 'tests')!r}); import hf_checkpoints; "
                f"from pathlib import Path; hf_checkpoints.write_causal({model!r}, Path({str(ckpt)!r}), "
                "dtype=torch.bfloat16)")  # fmt: skip
        peak_rss_child([sys.executable, "-c", code])
    d = root / "gguf"
    d.mkdir(parents=True, exist_ok=True)
    f32 = d / f"{model}-random-f32.gguf"
    if not f32.is_file():
        log(f"converting {ckpt} to an F32 GGUF with convert_hf_to_gguf.py…")
        env = {**os.environ, "PYTHONPATH": str(src / "gguf-py")}
        peak_rss_child([sys.executable, src / "convert_hf_to_gguf.py", ckpt, "--outtype", "f32",
                        "--outfile", f32.with_suffix(".tmp")], env=env)  # fmt: skip
        os.replace(f32.with_suffix(".tmp"), f32)
    out = {}
    for label, (qtype, flags) in LLAMA.items():
        path = d / f"{model}-random-{qtype.lower()}{'-pure' if flags else ''}.gguf"
        if not path.is_file():
            log(f"quantizing {label}…")
            peak_rss_child([bins / "llama-quantize", *flags, f32, path.with_suffix(".tmp"), qtype, threads])
            os.replace(path.with_suffix(".tmp"), path)
        out[label] = path
    return with_runs(out), str(ckpt)


def with_runs(ggufs: dict[str, Path]) -> dict[str, Path]:
    """``ggufs`` and, after each GGUF, the LLAMA_RUNS rows that time it with other flags."""
    out = {}
    for label, path in ggufs.items():
        out[label] = path
        out.update({run: path for run, (base, _) in LLAMA_RUNS.items() if base == label})
    return out


def _matches(d: Path, args: list[str]) -> bool:
    """``d`` holds an export of ``args``' recipe, ops, KV cache dtype, (when given) PTQ method and
    the backend's default prefill chunk at MAX_SEQ_LEN: --skip-export may reuse it."""
    if not (d / "manifest.json").is_file():
        return False
    m = json.loads((d / "manifest.json").read_text())
    opt = dict(zip(args[::2], args[1::2]))
    kv = m["methods"].get("forward", {}).get("kv_cache_dtype")
    want_kv = {"fp16": "float16", "q8": "q8"}.get(opt.get("--kv-cache", ""), "float32")
    ptq = opt.get("--ptq")
    same_ptq = ptq is None or m["recipe"].get("ptq") == ptq
    from gemma_edge.export import BACKENDS, default_prefill_chunk
    from gemma_edge.models import ModelConfig

    cap = BACKENDS[opt["--backend"]]().prefill_chunk  # LiteRT's went from 128 to 32 on 2026-12-06
    cfg = ModelConfig.from_dict(m["config"])
    chunk = int(opt.get("--prefill-chunk", 0)) or default_prefill_chunk(cfg, MAX_SEQ_LEN, cap)
    return (m["recipe"]["name"] == opt["--quant"] and (kv is None or kv == want_kv) and m["max_seq_len"] == MAX_SEQ_LEN
            and m["ops"] == opt.get("--ops", "portable") and same_ptq and m.get("prefill_chunk") == chunk)  # fmt: skip


def export_ours(source: str, out: Path, skip: bool, extra: tuple[str, ...] | list[str] = ()) -> dict[str, Path]:
    arts = {}
    for label, args in OURS.items():
        d = out / label.split()[0].lower()
        arts[label] = d
        if skip and _matches(d, [*args, *extra]):
            continue
        log(f"exporting {label} from {source}…")
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "gemma_edge.cli", "export", source, *args, "--max-seq-len", str(MAX_SEQ_LEN),
               "--no-verify", "-o", str(d), "--overwrite", *extra]  # fmt: skip
        peak_rss_child(cmd, cwd=ROOT)
        log(f"  {time.perf_counter() - t0:.0f} s")
    return arts


OUR_CHILD = """
import json, sys, time, torch
from gemma_edge.runtime_py.session import import_runtime, load
from gemma_edge.runtime_py.bench import _reset_peak_rss, current_rss_mib, peak_rss_mib
d, threads, contexts, steps = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4])
import_runtime(d)
base = current_rss_mib()
_reset_peak_rss()
s = load(d, threads=threads)
res = {"decode_tok_s": {}, "load_peak_rss_mib": peak_rss_mib() - base}
_reset_peak_rss()  # from here on: the peak while generating
g = torch.Generator().manual_seed(0)
for ctx in contexts:
    s.reset()
    s.prefill(torch.randint(3, s.config.vocab_size, (ctx,), generator=g).tolist())
    for _ in range(4):
        s.decode(5)
    s.pos = ctx
    t0 = time.perf_counter()
    for _ in range(steps):
        s.decode(5)
    res["decode_tok_s"][ctx] = steps / (time.perf_counter() - t0)
res["model_rss_mib"] = peak_rss_mib() - base
print(json.dumps(res))
"""


def measure_ours(d: Path, threads: int, contexts: list[int]) -> dict:
    out, peak = peak_rss_child([sys.executable, "-c", OUR_CHILD, d, threads, json.dumps(contexts), DECODE_STEPS],
                               cwd=ROOT)  # fmt: skip
    res = json.loads(out.strip().splitlines()[-1])
    res["decode_tok_s"] = {int(k): v for k, v in res["decode_tok_s"].items()}
    return {**res, "process_peak_rss_mib": peak}


LITERTLM_CHILD = """
import json, sys, tempfile
import litert_lm
path, threads, contexts, steps = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4])
cache = tempfile.mkdtemp()  # its XNNPACK weight cache: not beside the model (the manifest lists every file)
litert_lm.set_min_log_severity(litert_lm.LogSeverity.ERROR)
res = {"decode_tok_s": {}, "prefill_tok_s": {}}
for ctx in contexts:
    info = litert_lm.Benchmark(model_path=path, backend=litert_lm.Backend.CPU(thread_count=threads), prefill_tokens=ctx,
                               decode_tokens=steps, max_num_tokens=ctx + steps + 8, cache_dir=cache).run()
    res["decode_tok_s"][ctx] = info.last_decode_tokens_per_second
    res["prefill_tok_s"][ctx] = info.last_prefill_tokens_per_second
print(json.dumps(res))
"""


def measure_litertlm(bundle: Path, threads: int, contexts: list[int]) -> dict:
    """LiteRT-LM's own Benchmark on our model.litertlm (prefill CTX tokens, then decode)."""
    out, peak = peak_rss_child([sys.executable, "-c", LITERTLM_CHILD, bundle, threads, json.dumps(contexts),
                                DECODE_STEPS], cwd=ROOT)  # fmt: skip
    res = json.loads(out.strip().splitlines()[-1])
    res = {k: {int(c): v for c, v in d.items()} for k, d in res.items()}
    return {**res, "process_peak_rss_mib": peak}


def measure_llama(bins: Path, gguf: Path, threads: int, contexts: list[int], flags: list[str] = ()) -> dict:
    depths = ",".join(map(str, contexts))
    cmd = [bins / "llama-bench", "-m", gguf, "-p", "0", "-n", DECODE_STEPS, "-d", depths, "-t", threads, "-r", "1",
           "-o", "json", *flags]  # fmt: skip
    out, peak = peak_rss_child(cmd)
    rows = json.loads(out)
    return {"decode_tok_s": {int(r["n_depth"]): float(r["avg_ts"]) for r in rows}, "process_peak_rss_mib": peak}


def file_bytes(path: Path) -> int:
    """The model file(s) a runtime maps: the GGUF, or the artifact's files but the tokenizer, the
    JSON and the LiteRT-LM bundle (a second copy of the .tflite, measured on its own row)."""
    if path.is_file():
        return path.stat().st_size
    m = json.loads((path / "manifest.json").read_text())
    skip = ("tokenizer.model", "model.litertlm", "model.ort")
    return sum((path / f).stat().st_size for f in m["files"] if f not in skip and not f.endswith(".json"))


def summarize(rounds: list[dict], files: dict[str, int], contexts: list[int]) -> dict:
    rows = {}
    for label in rounds[0]:
        runs = [r[label] for r in rounds]
        row = {"file_mib": files[label] / 2**20, "decode_tok_s": {}, "rounds": runs}
        for c in contexts:
            xs = [r["decode_tok_s"][c] for r in runs]
            row["decode_tok_s"][c] = {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}
        peak = statistics.median(r["process_peak_rss_mib"] for r in runs)
        row["process_peak_rss_mib"] = peak
        row["process_rss_over_file"] = peak / row["file_mib"]
        for key in ("model_rss", "load_peak_rss"):
            if f"{key}_mib" in runs[0]:
                row[f"{key}_over_file"] = statistics.median(r[f"{key}_mib"] for r in runs) / row["file_mib"]
        rows[label] = row
    for row in rows.values():
        row["ratio"] = {ref: {c: row["decode_tok_s"][c]["median"] / rows[ref]["decode_tok_s"][c]["median"]
                              for c in contexts} for ref in REFS if ref in rows}  # fmt: skip
    return rows


def markdown(res: dict) -> str:
    cs = res["contexts"]
    refs = list(next(iter(res["rows"].values()))["ratio"])
    short = {ref: ref.removeprefix("llama.cpp ") for ref in refs}
    head = ["format", "file MiB", *[f"decode @{c} (tok/s)" for c in cs],
            *[f"× {short[ref]} @{c}" for ref in refs for c in cs], "peak RSS / file",
            "model RSS / file, generating (load peak)"]  # fmt: skip
    lines = [f"# Decode vs llama.cpp: {res['model']} ({res['threads']} threads, {res['rounds']} interleaved rounds)",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]  # fmt: skip
    for label, r in res["rows"].items():
        d = r["decode_tok_s"]
        cells = [label, f"{r['file_mib']:.0f}",
                 *[f"{d[c]['median']:.1f} ({d[c]['min']:.1f}–{d[c]['max']:.1f})" for c in cs],
                 *[f"{r['ratio'][ref][c]:.2f}" for ref in refs for c in cs],
                 f"{r['process_rss_over_file']:.2f}",
                 f"{r['model_rss_over_file']:.2f} ({r['load_peak_rss_over_file']:.2f})"
                 if "load_peak_rss_over_file" in r else "—"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Medians (min–max) over rounds; each format in a fresh process per round. Peak RSS is the whole "
              "process's (ru_maxrss); model RSS is what the model adds over the imported runtime: its peak "
              "while generating (prefill and decode at each context, token ids in and out) and, in brackets, "
              "while loading."]
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cs, labels = res["contexts"], list(res["rows"])
    fig, ax = plt.subplots(figsize=(9, 4.5))
    w = 0.8 / len(cs)
    for i, c in enumerate(cs):
        vals = [res["rows"][k]["decode_tok_s"][c]["median"] for k in labels]
        ax.bar([j + i * w for j in range(len(labels))], vals, w, label=f"context {c}")
    ax.set_xticks([j + w * (len(cs) - 1) / 2 for j in range(len(labels))], labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("decode tok/s (median)")
    ax.set_title(f"{res['model']}: decode, {res['threads']} threads, same run")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=["gemma3-270m", "gemma3-1b"], default="gemma3-270m")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--contexts", type=int, nargs="+", default=[128, 4096])
    p.add_argument("--skip-export", action="store_true", help="reuse artifacts/vs_llamacpp/MODEL when present")
    a = p.parse_args()
    root = llamacpp.cache()
    src, bins, built = llamacpp.build(root)
    ggufs, source = ggufs_for(a.model, bins, src, root, a.threads)
    # Random gemma3-1b-shaped weights have no quality to keep: round-to-nearest codes, the same bytes
    # per token to decode (a GPTQ export of the 1B was killed at 20 GiB RSS on a 24 GiB machine).
    extra = ["--ptq", "rtn"] if a.model == "gemma3-1b" else []
    ours = export_ours(source, ROOT / "artifacts" / "vs_llamacpp" / a.model, a.skip_export, extra)
    files = {**{k: file_bytes(v) for k, v in ggufs.items()}, **{k: file_bytes(v) for k, v in ours.items()}}
    if (ours["LiteRT int4"] / "model.litertlm").is_file():
        files["LiteRT-LM (our model.litertlm)"] = (ours["LiteRT int4"] / "model.litertlm").stat().st_size
    rounds = []
    for r in range(a.rounds):
        this = {}
        for label, g in ggufs.items():
            this[label] = measure_llama(bins, g, a.threads, a.contexts, LLAMA_RUNS.get(label, (None, []))[1])
            log(f"round {r + 1} {label}: {this[label]['decode_tok_s']}")
        for label, d in ours.items():
            this[label] = measure_ours(d, a.threads, a.contexts)
            log(f"round {r + 1} {label}: {this[label]['decode_tok_s']}")
            if (d / "model.litertlm").is_file():
                lm = "LiteRT-LM (our model.litertlm)"
                this[lm] = measure_litertlm(d / "model.litertlm", a.threads, a.contexts)
                log(f"round {r + 1} {lm}: {this[lm]['decode_tok_s']}")
        rounds.append(this)
    res = {"model": a.model, "threads": a.threads, "rounds": a.rounds, "contexts": a.contexts,
           "decode_steps": DECODE_STEPS, "llama_cpp": {k: v for k, v in built.items() if k != "cached"},
           "ggufs": {k: str(v) for k, v in ggufs.items()}, "artifacts": {k: str(v) for k, v in ours.items()},
           "rows": summarize(rounds, files, a.contexts), "date": time.strftime("%Y-%m-%d %H:%M")}  # fmt: skip
    report.save(HERE / "results" / f"vs_llamacpp_{a.model}", res, markdown, plot)


if __name__ == "__main__":
    main()
