"""Benchmark an artifact in its runtime under a device profile.

Causal LMs: load time, time to first token, prefill tok/s (prompts of 128 and 512), decode tok/s at
contexts of 128, 1K and 4K where max_seq_len allows, peak resident memory, artifact size, and the
decode roofline: bytes read per token (weights + state) over this machine's measured read bandwidth.
Encoders: embedding latency per input length. Every figure is the median of ``repeats`` runs, with
min and max. Reports: JSON, a Markdown table, and a PNG plot.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

from gemma_edge.models.errors import InputError

from .profiles import apply_profile, get_profile
from .session import import_runtime, load

__all__ = ["benchmark", "write_reports", "read_bandwidth", "peak_rss_mib", "current_rss_mib"]


def _status_mib(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    return _status_mib("VmHWM:")


def current_rss_mib() -> float:
    return _status_mib("VmRSS:")


def _reset_peak_rss() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0) so later peaks exclude earlier work."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def read_bandwidth(threads: int, mib: int = 512, repeats: int = 7) -> float:
    """Bytes read per second by a reduction over a large tensor with ``threads`` threads.

    Decode streams weights it only reads, so a read-only probe is its ceiling; a copy also writes
    (and write-allocates), so it understates what reading alone reaches.
    """
    torch.set_num_threads(threads)
    src = torch.ones(mib * (1 << 20) // 4)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        src.sum()
        times.append(time.perf_counter() - t0)
    return src.numel() * 4 / statistics.median(times)


def _stats(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _weight_bytes(artifact_dir: Path, manifest: dict) -> int:
    """The model file plus its external weights (``model.onnx.data``) where it has them."""
    model = artifact_dir / manifest["model_file"]
    data = model.with_name(model.name + ".data")
    return model.stat().st_size + (data.stat().st_size if data.exists() else 0)


def benchmark(artifact_dir: str | Path, profile: str = "phone-mid", *, repeats: int = 3, decode_steps: int = 32,
              progress=print) -> dict:  # fmt: skip
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise InputError(f"repeats must be a positive integer, got {repeats!r}")
    if isinstance(decode_steps, bool) or not isinstance(decode_steps, int) or decode_steps < 1:
        raise InputError(f"decode_steps must be a positive integer, got {decode_steps!r}")
    d = Path(artifact_dir)
    prof = get_profile(profile)
    applied = apply_profile(prof)
    progress(
        f"profile {prof.name}: {applied['threads_used']} of {prof.threads} threads (host has {applied['host_cpus']})"
    )
    bw = read_bandwidth(applied["threads_used"])
    before_runtime = current_rss_mib()
    import_runtime(d)  # the runtime's libraries are the process's, not the model's
    base_rss = current_rss_mib()
    _reset_peak_rss()
    load_times, session = [], None
    for _ in range(repeats):
        del session
        t, session = _timed(lambda: load(d, threads=applied["threads_used"]))
        load_times.append(t)
    s = session
    cfg = s.config
    load_peak = peak_rss_mib()
    _reset_peak_rss()  # from here on: the peak while generating (or embedding)
    res = {
        "artifact": str(d), "backend": s.manifest["backend"], "recipe": s.manifest["recipe"]["name"],
        "ops": s.manifest["ops"], "family": cfg.family, "profile": prof.to_dict(), "applied": applied,
        "artifact_bytes": sum(p.stat().st_size for p in d.iterdir() if p.is_file()),
        "model_file_bytes": _weight_bytes(d, s.manifest), "load_s": _stats(load_times),
        "read_bandwidth_gbs": bw / 1e9, "max_seq_len": s.max_seq_len,
    }  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    ids = lambda n: torch.randint(3, cfg.vocab_size, (n,), generator=gen).tolist()  # noqa: E731
    if not cfg.causal:
        res["embed_ms"] = _time_embed(s, ids, repeats, progress)
    else:
        res.update(_time_prefill(s, ids, repeats, progress))
        res.update(_time_decode(s, ids, repeats, decode_steps, progress))
        res["roofline"] = _roofline(s, res, bw)
    res["generation_peak_rss_mib"] = peak_rss_mib()
    res["load_peak_rss_mib"] = load_peak
    res["peak_rss_mib"] = max(load_peak, res["generation_peak_rss_mib"])
    res["model_rss_mib"] = res["generation_peak_rss_mib"] - base_rss  # what the loaded model adds while running
    res["runtime_rss_mib"] = base_rss - before_runtime  # the runtime's libraries, imported before the model
    res["within_budget"] = res["peak_rss_mib"] <= prof.memory_budget_mib
    return res


def _time_embed(s, ids, repeats: int, progress) -> dict:
    out = {}
    for n in [n for n in (16, 128, 512) if n <= s.max_seq_len] or [s.max_seq_len]:
        x = [ids(n)]
        s.embed(x)
        out[n] = _stats([_timed(lambda x=x: s.embed(x))[0] * 1e3 for _ in range(repeats)])
        progress(f"embed {n} tokens: {out[n]['median']:.1f} ms")
    return out


def _time_prefill(s, ids, repeats: int, progress) -> dict:
    res = {"prefill_tok_s": {}, "ttft_ms": {}}
    for n in [n for n in (128, 512) if n < s.max_seq_len] or [max(1, s.max_seq_len // 2)]:
        prompt = ids(n)
        times = []
        for _ in range(repeats):
            s.reset()
            times.append(_timed(lambda p=prompt: int(s.prefill(p).argmax()))[0])
        res["prefill_tok_s"][n] = _stats([n / t for t in times])
        res["ttft_ms"][n] = _stats([t * 1e3 for t in times])
        tok_s, ttft = res["prefill_tok_s"][n]["median"], res["ttft_ms"][n]["median"]
        progress(f"prefill {n}: {tok_s:.1f} tok/s, TTFT {ttft:.0f} ms")
    return res


def _time_decode(s, ids, repeats: int, decode_steps: int, progress) -> dict:
    # short artifacts (max_seq_len < 128 + decode_steps): one context, half-way, fewer steps
    contexts = [c for c in (128, 1024, 4096) if c + decode_steps <= s.max_seq_len]
    if not contexts and s.max_seq_len >= 2:
        contexts = [s.max_seq_len // 2]
        decode_steps = min(decode_steps, s.max_seq_len - contexts[0])
    res = {"decode_steps": decode_steps, "decode_tok_s": {}}
    for ctx in contexts:
        rates = []
        s.reset()
        s.prefill(ids(ctx))
        for _ in range(min(4, s.max_seq_len - ctx)):  # warm-up: one-off allocation and page faults
            s.decode(5)
        for _ in range(repeats):
            s.pos = ctx  # decode the same positions each repeat: the state before ctx is unchanged
            t, _ = _timed(lambda: [s.decode(5) for _ in range(decode_steps)])
            rates.append(decode_steps / t)
        res["decode_tok_s"][ctx] = _stats(rates)
        progress(f"decode at context {ctx}: {res['decode_tok_s'][ctx]['median']:.1f} tok/s")
    return res


def _roofline(s, res: dict, bw: float) -> dict:
    """Decode is memory-bound: each token reads every weight once plus the state it attends to.

    Weights read per token: the model file, less a separately quantized embedding table (of which
    a token reads one row); state: the KV and recurrent state at that context.
    """
    from gemma_edge.models import state_bytes

    out = {}
    weights = res["model_file_bytes"]
    rec, cfg = s.manifest["recipe"], s.config
    layout = next(iter(s.manifest["methods"].values())).get("quantization", {})
    shared = layout.get("embedding", {}).get("shared_with_head", False)  # then the head reads it all
    if rec.get("embedding_bits") and not shared:  # an untied quantized table: one row is read per token
        gs = rec["group_size"] if rec["embedding_bits"] == 4 and rec["group_size"] else cfg.d_model
        weights -= cfg.vocab_size * cfg.d_model * rec["embedding_bits"] // 8 + cfg.vocab_size * (cfg.d_model // gs) * 4
    # bytes per cached value: an ExecuTorch artifact may keep fp16 or q8 (34 bytes a block of 32) caches
    kv_dtype = s.manifest["methods"].get("forward", {}).get("kv_cache_dtype", "float32")
    kv_bytes = {"float16": 2, "q8": 34 / 32}.get(kv_dtype, 4)
    for ctx, st in res["decode_tok_s"].items():
        n = min(ctx, s.max_seq_len)  # recurrent states stay fp32
        state = state_bytes(s.config, n, kv_bytes=kv_bytes)["kv"] + state_bytes(s.config, n, kv_bytes=4)["recurrent"]
        per_token = weights + state
        limit = bw / per_token
        out[ctx] = {"bytes_per_token": per_token, "roofline_tok_s": limit, "fraction": st["median"] / limit}
    return out


def write_reports(res: dict, out_dir: str | Path) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "bench.json", "md": out / "bench.md", "png": out / "bench.png"}
    paths["json"].write_text(json.dumps(res, indent=2, default=str) + "\n")
    paths["md"].write_text(markdown(res))
    _plot(res, paths["png"])
    return paths


def _fmt(st: dict, digits: int = 1) -> str:
    return f"{st['median']:.{digits}f} ({st['min']:.{digits}f}–{st['max']:.{digits}f})"


def markdown(res: dict) -> str:
    a = res["applied"]
    lines = [
        f"# Benchmark: {res['family']} {res['recipe']} on {res['backend']} ({res['ops']} ops)",
        "",
        f"Profile `{res['profile']['name']}` ({res['profile']['description']}): {a['threads_used']} of "
        f"{res['profile']['threads']} threads on a {a['host_cpus']}-CPU host. Figures are median (min–max) "
        f"of {res['load_s']['n']} runs.",
        "",
        "| metric | value |",
        "|---|---|",
        f"| artifact size | {res['artifact_bytes'] / 2**20:.1f} MiB |",
        f"| load time | {_fmt({k: v * 1e3 if k != 'n' else v for k, v in res['load_s'].items()}, 0)} ms |",
    ]
    for n, st in res.get("prefill_tok_s", {}).items():
        lines.append(f"| prefill {n} tokens | {_fmt(st)} tok/s |")
    for n, st in res.get("ttft_ms", {}).items():
        lines.append(f"| time to first token, {n}-token prompt | {_fmt(st, 0)} ms |")
    for n, st in res.get("decode_tok_s", {}).items():
        r = res["roofline"][n]
        lines.append(
            f"| decode at context {n} | {_fmt(st)} tok/s — roofline {r['roofline_tok_s']:.1f} tok/s, "
            f"{100 * r['fraction']:.0f}% |"
        )
    for n, st in res.get("embed_ms", {}).items():
        lines.append(f"| embed {n} tokens | {_fmt(st)} ms |")
    lines += [
        f"| peak RSS (process) | {res['peak_rss_mib']:.0f} MiB (budget {res['profile']['memory_budget_mib']} MiB:"
        f" {'within' if res['within_budget'] else 'OVER'}) |",
        f"| peak RSS while loading | {res['load_peak_rss_mib']:.0f} MiB |",
        f"| RSS added by the model while generating (peak) | {res['model_rss_mib']:.0f} MiB "
        f"({res['model_rss_mib'] * 2**20 / res['model_file_bytes']:.2f}× the model file) |",
        f"| RSS of the runtime's libraries (imported before the model) | {res['runtime_rss_mib']:.0f} MiB |",
        f"| read bandwidth ({a['threads_used']} threads) | {res['read_bandwidth_gbs']:.1f} GB/s |",
        "",
    ]
    return "\n".join(lines)


def _plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    title = f"{res['family']} {res['recipe']} · {res['backend']} · {res['profile']['name']}"
    if "decode_tok_s" in res:
        ctx = list(res["decode_tok_s"])
        med = [res["decode_tok_s"][c]["median"] for c in ctx]
        lo = [m - res["decode_tok_s"][c]["min"] for c, m in zip(ctx, med)]
        hi = [res["decode_tok_s"][c]["max"] - m for c, m in zip(ctx, med)]
        axes[0].errorbar([str(c) for c in ctx], med, yerr=[lo, hi], marker="o", capsize=4, label="measured")
        roof = [res["roofline"][c]["roofline_tok_s"] for c in ctx]
        axes[0].plot([str(c) for c in ctx], roof, "x--", label="memory-bandwidth roofline")
        axes[0].set(xlabel="context (tokens)", ylabel="decode tok/s", title="decode",
                    ylim=(0, 1.1 * max(roof + med + [1.0])))  # fmt: skip
        axes[0].legend()
        pre = res["prefill_tok_s"]
        axes[1].bar([str(n) for n in pre], [pre[n]["median"] for n in pre])
        axes[1].set(xlabel="prompt (tokens)", ylabel="prefill tok/s", title="prefill")
    else:
        e = res["embed_ms"]
        axes[0].plot([str(n) for n in e], [e[n]["median"] for n in e], marker="o")
        axes[0].set(xlabel="tokens", ylabel="ms", title="embed latency")
        axes[1].axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
