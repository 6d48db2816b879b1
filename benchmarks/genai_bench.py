"""onnxruntime-genai's model builder as a baseline: build a model from a Hugging Face checkpoint and
measure it with the same prompts, contexts, threads and repeats as ``gemma-edge bench``.

The builder (onnxruntime-genai 0.18) reads Gemma 3's RoPE settings in transformers-4 form
(``rope_parameters["rope_type"]``, ``rope_local_base_freq``); transformers 5 nests them per layer
type, so ``build`` hands the builder a flattened copy of the config. Nothing else is changed.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path


def build(checkpoint: Path, out: Path, block_size: int = 32, accuracy_level: int = 4) -> None:
    """The builder's CLI (int4, block ``block_size``, symmetric, ``accuracy_level``, CPU EP), run
    in this process with Gemma 3's config flattened for it."""
    import runpy
    import sys

    import transformers

    original = transformers.AutoConfig.from_pretrained.__func__

    def flattened(cls, *args, **kwargs):
        cfg = original(cls, *args, **kwargs)
        rope = getattr(cfg, "rope_parameters", None)
        if isinstance(rope, dict) and "full_attention" in rope:
            cfg.rope_parameters = dict(rope["full_attention"])
            cfg.rope_theta = rope["full_attention"]["rope_theta"]
            cfg.rope_local_base_freq = rope["sliding_attention"]["rope_theta"]
        return cfg

    transformers.AutoConfig.from_pretrained = classmethod(flattened)
    sys.argv = [
        "builder", "-m", str(checkpoint), "-i", str(checkpoint), "-o", str(out), "-p", "int4", "-e", "cpu",
        "-c", str(out.parent / (out.name + "-cache")), "--extra_options", f"int4_block_size={block_size}",
        f"int4_accuracy_level={accuracy_level}", "int4_is_symmetric=true",
    ]  # fmt: skip
    runpy.run_module("onnxruntime_genai.models.builder", run_name="__main__")


def _stats(xs):
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def _status_mib(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) / 1024
    return float("nan")


def bench(model_dir: Path, threads: int, max_seq_len: int, vocab_size: int, repeats: int = 3,
          decode_steps: int = 32, progress=print) -> dict:  # fmt: skip
    """Load time, prefill tok/s (128, 512), decode tok/s at 128 / 1K / 4K, peak RSS; medians."""
    import onnxruntime_genai as og
    import torch

    cfg_path = model_dir / "genai_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["model"]["decoder"]["session_options"].update({"intra_op_num_threads": threads, "inter_op_num_threads": 1})
    cfg_path.write_text(json.dumps(cfg, indent=2))
    base = _status_mib("VmRSS:")
    Path("/proc/self/clear_refs").write_text("5")
    loads, model = [], None
    for _ in range(repeats):
        del model
        t0 = time.perf_counter()
        model = og.Model(str(model_dir))
        loads.append(time.perf_counter() - t0)
    gen = torch.Generator().manual_seed(0)
    ids = lambda n: torch.randint(3, vocab_size, (n,), generator=gen).tolist()  # noqa: E731

    def generator():
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=max_seq_len, do_sample=False)  # buffers sized like ours
        return og.Generator(model, params)

    res = {"load_s": _stats(loads), "prefill_tok_s": {}, "ttft_ms": {}, "decode_tok_s": {}}
    for n in (n for n in (128, 512) if n < max_seq_len):
        prompt, times = ids(n), []
        for _ in range(repeats):
            g = generator()
            t0 = time.perf_counter()
            g.append_tokens(prompt)
            g.get_logits()
            times.append(time.perf_counter() - t0)
        res["prefill_tok_s"][n] = _stats([n / t for t in times])
        res["ttft_ms"][n] = _stats([t * 1e3 for t in times])
        progress(f"genai prefill {n}: {res['prefill_tok_s'][n]['median']:.1f} tok/s")
    for ctx in (c for c in (128, 1024, 4096) if c + decode_steps <= max_seq_len):
        prompt, rates = ids(ctx), []
        for _ in range(repeats):
            g = generator()
            g.append_tokens(prompt)
            for _ in range(4):  # warm-up, as gemma-edge bench does
                g.generate_next_token()
            t0 = time.perf_counter()
            for _ in range(decode_steps):
                g.generate_next_token()
            rates.append(decode_steps / (time.perf_counter() - t0))
        res["decode_tok_s"][ctx] = _stats(rates)
        progress(f"genai decode at context {ctx}: {res['decode_tok_s'][ctx]['median']:.1f} tok/s")
    res["peak_rss_mib"] = _status_mib("VmHWM:")
    res["model_rss_mib"] = res["peak_rss_mib"] - base
    files = [p for p in model_dir.iterdir() if p.is_file()]
    res["artifact_bytes"] = sum(p.stat().st_size for p in files)
    res["model_file_bytes"] = sum(p.stat().st_size for p in files if p.name.startswith("model.onnx"))
    return res
