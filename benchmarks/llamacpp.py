"""llama.cpp's perplexity on our weights and text: the reference row for the quality benchmark.

    python benchmarks/llamacpp.py [--chunks 8] [--ctx 512] [--threads 2]

1. Builds llama.cpp (CPU, Release, no CURL) from the vendor/llama.cpp tree of the
   ``llama-cpp-python==0.3.36`` sdist on the package registry, once: the build, the sources and
   the GGUFs below are cached in ``$GEMMA_EDGE_CACHE`` (default ``~/.cache/gemma_edge``)/llama.cpp/0.3.36.
2. Dequantizes ``fixtures.real_gemma3_270m()`` (Google's gemma-3-270m, Q4_K_M GGUF) to an F32
   GGUF: transformers loads the GGUF and saves a HF checkpoint, llama.cpp's convert_hf_to_gguf.py
   converts it back (``--outtype f32``). llama-quantize makes Q8_0, Q4_0, Q4_0 --pure and Q4_K_M of it.
3. llama-perplexity on ``fixtures.text("hamlet")`` for each: PPL, and mean KL divergence and top-1
   agreement ("Same top p") against the F32 logits (the F32 run saves them). The original Q4_K_M
   fixture is measured too: it holds exactly the F32 weights, so its KL is llama.cpp's quantized
   kernels' own (8-bit activations), and its PPL checks the round trip.

Results: results/llamacpp_gemma3-270m.json. Bits per weight = 8 * file bytes / 268,098,176 parameters,
GGUF metadata (about 6.5 MB, mostly the 262k-token vocabulary) included.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from gemma_edge import fixtures

HERE = Path(__file__).parent

VERSION = "0.3.36"
N_PARAMS = 268098176
TARGETS = ["llama-perplexity", "llama-quantize", "llama-bench"]
# name -> (llama-quantize type, extra flags); None: the F32 conversion itself
FORMATS = {
    "F32": None,
    "Q8_0": ("Q8_0", []),
    "Q4_0": ("Q4_0", []),
    "Q4_0 --pure": ("Q4_0", ["--pure"]),
    "Q4_K_M": ("Q4_K_M", []),
}
ORIGINAL = "Q4_K_M (original fixture)"


def cache() -> Path:
    return Path(os.environ.get("GEMMA_EDGE_CACHE", Path.home() / ".cache" / "gemma_edge")) / "llama.cpp" / VERSION


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sh(cmd: list, **kw) -> str:
    """Run ``cmd``; its stdout and stderr together, or exit with their tail."""
    r = subprocess.run(
        [str(c) for c in cmd],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        encoding="utf-8",
        errors="replace",
        **kw,
    )
    if r.returncode:
        sys.exit(f"{shlex.join(map(str, cmd))} failed ({r.returncode}):\n{r.stdout[-3000:]}")
    return r.stdout


def timed(cmd: list, **kw) -> tuple[str, float, str]:
    t0 = time.perf_counter()
    out = sh(cmd, **kw)
    return out, time.perf_counter() - t0, shlex.join(map(str, cmd))


def build(root: Path) -> tuple[Path, Path, dict]:
    """llama.cpp's source tree, its bin/ and the build's record (built once, then cached)."""
    sdist, bins, record = root / f"llama_cpp_python-{VERSION}", root / "build" / "bin", root / "build.json"
    src, cmake = sdist / "vendor" / "llama.cpp", Path(sys.executable).parent / "cmake"  # the venv's (>= 3.28)
    configure = [
        cmake,
        "-S",
        src,
        "-B",
        root / "build",
        "-DCMAKE_BUILD_TYPE=Release",
        "-DLLAMA_CURL=OFF",
        "-DLLAMA_OPENSSL=OFF",
        "-DBUILD_SHARED_LIBS=OFF",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DLLAMA_BUILD_SERVER=OFF",
    ]
    if platform.machine().lower() in ("x86_64", "amd64"):
        # No AMX: GCC 12's _tile_loadconfig tells the compiler it reads 8 bytes of the 64-byte tile config,
        # so the stores filling it in can be dropped; ggml's AMX matmul (Q8_0, Q4_0, Q4_K on an AMX CPU
        # with -march=native) then dies with SIGSEGV in ldtilecfg.
        no_amx = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
        configure += [f"-DCMAKE_C_FLAGS={no_amx}", f"-DCMAKE_CXX_FLAGS={no_amx}"]
    make = [cmake, "--build", root / "build", "--config", "Release", "-j", "2", "--target", *TARGETS]
    commands = [shlex.join(map(str, c)) for c in (configure, make)]
    if all((bins / t).is_file() for t in TARGETS) and record.is_file():
        rec = json.loads(record.read_text())
        if rec["commands"] == commands:
            return src, bins, {**rec, "cached": True}
    root.mkdir(parents=True, exist_ok=True)
    if not src.is_dir():
        log(f"downloading llama-cpp-python=={VERSION} (sdist)…")
        with tempfile.TemporaryDirectory(dir=root) as td:
            sh(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "-q",
                    "--no-deps",
                    "--no-binary",
                    ":all:",
                    f"llama-cpp-python=={VERSION}",
                    "-d",
                    td,
                ]
            )
            with tarfile.open(next(Path(td).glob("*.tar.gz"))) as tar:
                tar.extractall(td, filter="data")
            os.replace(Path(td) / sdist.name, sdist)
    log("building llama.cpp (about 5-10 min on 2 cores)…")
    t0 = time.perf_counter()
    sh(configure)
    sh(make)
    version = sh([bins / "llama-perplexity", "--version"]).strip().splitlines()[0]
    rec = {"wall_s": time.perf_counter() - t0, "commands": commands, "version": version}
    record.write_text(json.dumps(rec, indent=1))
    return src, bins, {**rec, "cached": False}


def write_hf_checkpoint(gguf_path: Path, out: Path) -> None:
    """The GGUF's weights, dequantized by transformers, as a HF checkpoint convert_hf_to_gguf.py reads."""
    import torch
    from gguf import GGUFReader
    from sentencepiece import sentencepiece_model_pb2 as spm
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    kw = {"gguf_file": gguf_path.name}
    # dequantize=True gives a plain dense model; without it save_pretrained refuses (GGUF "is not serializable").
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True), **kw
    )
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(gguf_path.parent, **kw).save_pretrained(out)
    # transformers saves only tokenizer.json, with which convert_hf_to_gguf.py takes its BPE path (tokenizer
    # "gpt2", a guessed pre-tokenizer): not Gemma's tokenizer. Give it the SentencePiece tokenizer.model
    # it expects, rebuilt from the GGUF's vocabulary, and its user-defined tokens as added_tokens.json.
    fields = GGUFReader(gguf_path).fields
    tok = {k[len("tokenizer.ggml.") :]: f.contents() for k, f in fields.items() if k.startswith("tokenizer.ggml.")}
    m = spm.ModelProto()
    m.trainer_spec.model_type, m.trainer_spec.vocab_size = spm.TrainerSpec.BPE, len(tok["tokens"])
    m.trainer_spec.byte_fallback = True
    m.trainer_spec.unk_id, m.trainer_spec.bos_id = tok["unknown_token_id"], tok["bos_token_id"]
    m.trainer_spec.eos_id, m.trainer_spec.pad_id = tok["eos_token_id"], tok["padding_token_id"]
    m.normalizer_spec.name, m.normalizer_spec.add_dummy_prefix = "identity", False
    m.normalizer_spec.remove_extra_whitespaces = False
    for piece, score, kind in zip(tok["tokens"], tok["scores"], tok["token_type"]):
        m.pieces.add(piece=piece, score=score, type=kind)  # GGUF token types are SentencePiece's
    (out / "tokenizer.model").write_bytes(m.SerializeToString())
    user = {t: i for i, (t, kind) in enumerate(zip(tok["tokens"], tok["token_type"])) if kind == 4}
    (out / "added_tokens.json").write_text(json.dumps(user))


def same_tokenizer(a: Path, b: Path) -> None:
    from gguf import GGUFReader

    fa, fb = GGUFReader(a).fields, GGUFReader(b).fields
    for k in ("model", "pre", "tokens", "scores", "token_type", "bos_token_id", "eos_token_id", "add_bos_token"):
        if fa[f"tokenizer.ggml.{k}"].contents() != fb[f"tokenizer.ggml.{k}"].contents():
            sys.exit(f"{b.name}: tokenizer.ggml.{k} differs from {a.name}'s")


def make_ggufs(src: Path, bins: Path, root: Path, original: Path, threads: int) -> dict:
    """name -> {path, commands, make_wall_s}: the F32 conversion and its quantizations, cached."""
    out, d = {}, root / "gguf"
    d.mkdir(parents=True, exist_ok=True)
    f32 = d / "gemma-3-270m-f32.gguf"
    gguf_py = os.pathsep.join(filter(None, [str(src / "gguf-py"), os.environ.get("PYTHONPATH")]))  # its own gguf
    convert = [sys.executable, src / "convert_hf_to_gguf.py", "HF_DIR", "--outtype", "f32", "--outfile", f32]
    out["F32"] = {
        "path": f32,
        "commands": ["write_hf_checkpoint(fixture, HF_DIR)", f"PYTHONPATH={gguf_py} {shlex.join(map(str, convert))}"],
    }
    if not f32.is_file():
        log("converting the Q4_K_M GGUF to F32 (transformers -> HF checkpoint -> convert_hf_to_gguf.py)…")
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(dir=root) as td:
            write_hf_checkpoint(original, Path(td))
            tmp = f32.with_suffix(".tmp")
            sh([c if c != "HF_DIR" else td for c in convert[:-1]] + [tmp], env={**os.environ, "PYTHONPATH": gguf_py})
            same_tokenizer(original, tmp)
            os.replace(tmp, f32)
        out["F32"]["make_wall_s"] = time.perf_counter() - t0
    for name, spec in FORMATS.items():
        if spec is None:
            continue
        qtype, flags = spec
        path = d / f"gemma-3-270m-{name.lower().replace(' --', '-')}.gguf"
        cmd = [bins / "llama-quantize", *flags, f32, path, qtype, threads]
        out[name] = {"path": path, "commands": [shlex.join(map(str, cmd))]}
        if not path.is_file():
            log(f"quantizing {name}…")
            _, out[name]["make_wall_s"], _ = timed([*cmd[:-3], path.with_suffix(".tmp"), *cmd[-2:]])
            os.replace(path.with_suffix(".tmp"), path)
    out[ORIGINAL] = {"path": original, "commands": ["fixtures.real_gemma3_270m()"]}
    return out


def grab(pattern: str, text: str, what: str) -> tuple[float, float]:
    m = re.search(pattern, text)
    if m is None:
        sys.exit(f"no {what} in llama-perplexity's output:\n{text[-2000:]}")
    return float(m[1]), float(m[2])


def llamacpp_results(chunks: int = 8, ctx: int = 512, threads: int = 2) -> dict:
    """Build, convert, quantize and measure; the dict results/llamacpp_gemma3-270m.json holds."""
    root = cache()
    src, bins, built = build(root)
    original, text = fixtures.real_gemma3_270m(), fixtures.text("hamlet")
    ggufs = make_ggufs(src, bins, root, original, threads)
    ppl = [bins / "llama-perplexity", "-f", text, "-c", ctx, "-b", ctx, "--chunks", chunks, "-t", threads]
    rows = {}
    with tempfile.TemporaryDirectory(dir=root) as td:
        base = Path(td) / "f32.kld"  # the F32 logits, about 1 GB at 8 x 512
        for name, g in ggufs.items():
            row = rows[name] = {"file": str(g["path"]), "file_bytes": g["path"].stat().st_size}
            row["bpw"] = 8 * row["file_bytes"] / N_PARAMS
            log(f"perplexity {name}…")
            kld = ["--kl-divergence-base", base] if name == "F32" else []  # the F32 run also saves its logits
            out, row["ppl_wall_s"], cmd = timed([*ppl[:1], "-m", g["path"], *ppl[1:], *kld])
            row["ppl"], row["ppl_err"] = grab(r"Final estimate: PPL = ([\d.]+) \+/- ([\d.]+)", out, "PPL")
            row["kl_mean"] = row["kl_err"] = row["top1"] = row["top1_err"] = None
            row["commands"] = [*g["commands"], cmd]
            if name != "F32":
                log(f"KL divergence {name} vs F32…")
                out, row["kld_wall_s"], cmd = timed(
                    [*ppl[:1], "-m", g["path"], *ppl[1:], "--kl-divergence-base", base, "--kl-divergence"]
                )
                row["kl_mean"], row["kl_err"] = grab(r"Mean\s+KLD:\s+([-\d.]+)\s*±\s*([\d.]+)", out, "mean KLD")
                top1, err = grab(r"Same top p:\s+([\d.]+)\s*±\s*([\d.]+)\s*%", out, "Same top p")
                row["top1"], row["top1_err"] = round(top1 / 100, 6), round(err / 100, 6)
                row["commands"].append(cmd)
            if "make_wall_s" in g:  # conversion or quantization, this run (absent when cached)
                row["make_wall_s"] = g["make_wall_s"]
    return {
        "model": "google/gemma-3-270m (base), weights of the Q4_K_M GGUF fixture",
        "text": str(text),
        "llama_cpp": f"llama-cpp-python=={VERSION} vendor/llama.cpp, {built['version']}",
        "build": built,
        "n_params": N_PARAMS,
        "chunks": chunks,
        "ctx": ctx,
        "threads": threads,
        "bpw_note": "8 * file bytes / n_params, GGUF metadata included",
        "top1_note": "fraction of tokens",
        "formats": rows,
    }


def markdown(res: dict) -> str:
    lines = [
        f"llama.cpp perplexity, {Path(res['text']).name}, {res['chunks']} x {res['ctx']} tokens ({res['llama_cpp']})",
        "",
        "| format | file MiB | bits/weight | PPL | KL vs F32 | top-1 vs F32 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in res["formats"].items():
        kl = "—" if r["kl_mean"] is None else f"{r['kl_mean']:.4f}"
        top1 = "—" if r["top1"] is None else f"{100 * r['top1']:.2f} %"
        lines.append(
            f"| {name} | {r['file_bytes'] / 2**20:.1f} | {r['bpw']:.2f} | {r['ppl']:.2f} ± {r['ppl_err']:.2f} "
            f"| {kl} | {top1} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chunks", type=int, default=8)
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    t0 = time.perf_counter()
    res = llamacpp_results(a.chunks, a.ctx, a.threads)
    res["wall_s"] = time.perf_counter() - t0
    out = HERE / "results" / "llamacpp_gemma3-270m.json"
    out.write_text(json.dumps(res, indent=1, ensure_ascii=False) + "\n")
    print(markdown(res))
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
