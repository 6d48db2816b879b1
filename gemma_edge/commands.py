"""The commands behind the CLI (gemma_edge/cli.py parses the arguments)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from gemma_edge.models.errors import InputError
from gemma_edge.sources import reference_from_manifest, resolve


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


def _qat_ptq(args, source: str, src: dict) -> str:
    """The PTQ method for this export: a QAT checkpoint's own grid by round-to-nearest (its record
    goes into the manifest's source), else --ptq."""
    from gemma_edge.qat_command import check_qat_export, qat_record
    from gemma_edge.quant import parse_recipe

    record = qat_record(source) if Path(source).is_dir() else None
    if record is None:
        return args.ptq
    recipe = parse_recipe(args.quant, args.group_size, args.ptq)
    ptq = check_qat_export(record, args.backend, recipe, getattr(args, "allow_other_grid", False))
    src["qat"] = {k: record[k] for k in ("backend", "recipe", "grid", "teacher", "steps", "tokens")}
    print(f"      QAT checkpoint for {record['backend']} {record['recipe']['name']}: 4-bit codes by {ptq}")
    return ptq


def _do_export(args, source: str, out: Path) -> Path:
    from gemma_edge.export import export

    t0 = time.perf_counter()
    print(f"[0/4] load {source}")
    allow = getattr(args, "allow_unknown_keys", False)
    model, tok, src = resolve(source, args.seed, allow)
    ptq = _qat_ptq(args, source, src)
    reference = lambda: resolve(source, args.seed, allow, tokenizer=False)[0]  # noqa: E731
    # Quantize the loaded model in place and rebuild the fp32 reference for verify afterwards: half
    # the peak memory of keeping both.
    return export(
        model, args.backend, args.quant, args.max_seq_len, args.ops, out, prefill_chunk=args.prefill_chunk,
        group_size=args.group_size, ptq=ptq, tokenizer_path=tok, verify=not args.no_verify,
        overwrite=args.overwrite, inplace=True, reference=reference,
        source=src, options=_backend_options(args),
        progress=lambda m: print(f"{time.perf_counter() - t0:7.1f}s {m}", flush=True),
    )  # fmt: skip


def _backend_options(args) -> dict | None:
    """The backend-only flags that were given (the backend refuses those it does not take)."""
    opts = {"ort_format": True} if args.ort_format else {}
    if getattr(args, "kv_cache", None):
        opts["kv_cache"] = args.kv_cache
    return opts or None


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
    model = reference_from_manifest(m, args.reference, args.seed)
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
        reference = None if args.no_reference else reference_from_manifest(m, args.reference, args.seed, teacher=True)
        title = f"{p.name}: {m['backend']} {m['recipe']['name']} ({m['ops']} ops)"
    else:
        target, tok_path, _ = resolve(args.target, args.seed)
        if tok_path is None:
            raise InputError(f"{p} has no tokenizer: eval needs one to tokenize {text}")
        tok = Tokenizer(tok_path, target.config.family)
        reference = None if args.no_reference or not args.reference else resolve(args.reference, args.seed)[0]
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

    if args.adb:
        from gemma_edge.adb_bench import bench_on_device

        print(bench_on_device(args.artifact, args.adb, threads=args.threads))
        return 0
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
    ref = eager_greedy(resolve(source, seed, tokenizer=False)[0], ids, steps, session.max_seq_len)
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
