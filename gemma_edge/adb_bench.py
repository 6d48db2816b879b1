"""``gemma-edge bench ARTIFACT --adb SERIAL``: the artifact on an attached Android device, timed by
its runtime's own benchmark binary (not our Python harness).

The binaries are the runtimes' own, built for android-arm64 and pushed once to
``/data/local/tmp/gemma-edge/bin`` (android_demo/README.md says how): ExecuTorch's ``llama_main``
(the LLM runner, which prints prefill/decode rates), onnxruntime-genai's ``model_benchmark`` (reads
our ``genai_config.json``), LiteRT's ``benchmark_model`` on the ``decode`` signature. The artifact's
files (sha256-checked here first) go to ``/data/local/tmp/gemma-edge/NAME``; the binary's output is
printed and saved as ``ARTIFACT/bench/adb_SERIAL.txt``.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

from gemma_edge.models.errors import InputError
from gemma_edge.runtime_py.manifest import MANIFEST, read_manifest

DEVICE_ROOT = "/data/local/tmp/gemma-edge"
BINARIES = {"executorch": "llama_main", "onnx": "model_benchmark", "litert": "benchmark_model"}
PROMPT = "To be, or not to be, that is the question:"


def device_command(manifest: dict, remote: str, *, threads: int, prompt_len: int, gen_len: int) -> list[str]:
    """The benchmark binary's command line on the device for this artifact."""
    backend = manifest["backend"]
    exe = f"{DEVICE_ROOT}/bin/{BINARIES[backend]}"
    if backend == "executorch":
        return [exe, f"--model_path={remote}/{manifest['model_file']}", f"--tokenizer_path={remote}/tokenizer.model",
                f"--prompt={PROMPT}", f"--seq_len={min(manifest['max_seq_len'], prompt_len + gen_len)}",
                "--temperature=0", f"--cpu_threads={threads}"]  # fmt: skip
    if backend == "onnx":
        return [exe, "-i", remote, "-l", str(prompt_len), "-g", str(gen_len), "-r", "5"]
    return [exe, f"--graph={remote}/{manifest['model_file']}", "--signature_to_run_for_benchmark=decode",
            f"--num_threads={threads}", "--use_xnnpack=true", "--num_runs=50"]  # fmt: skip


def attached(adb: str) -> list[str]:
    """Serials that ``adb devices`` lists in the 'device' state (not offline or unauthorized)."""
    out = subprocess.run([adb, "devices"], capture_output=True, text=True, timeout=60).stdout
    return [p[0] for p in (line.split() for line in out.splitlines()[1:]) if len(p) >= 2 and p[1] == "device"]


def bench_on_device(artifact: str | Path, serial: str, *, threads: int = 4, prompt_len: int = 128,
                    gen_len: int = 128, adb: str | None = None, progress=print) -> str:  # fmt: skip
    d = Path(artifact)
    adb = adb or shutil.which("adb")
    if adb is None:
        raise InputError(f"no Android device {serial!r} is attached: adb (Android platform-tools) is not on PATH, "
                         "so no device can be reached from this machine")  # fmt: skip
    devices = attached(adb)
    if serial not in devices:
        listed = ", ".join(devices) if devices else "none"
        raise InputError(f"no Android device {serial!r} is attached (adb devices lists: {listed})")
    m = read_manifest(d)
    if not m["config"].get("causal", True):
        raise InputError(f"{d} is an encoder ({m['family']}): the device benchmarks time generation")
    if m["backend"] == "executorch" and m["ops"] == "fused":
        progress("note: a fused .pte needs llama_main built with gemma-edge's kernels (android_demo/README.md)")
    sh = lambda *cmd: subprocess.run([adb, "-s", serial, "shell", *cmd], capture_output=True, text=True, timeout=3600)  # noqa: E731
    exe = f"{DEVICE_ROOT}/bin/{BINARIES[m['backend']]}"
    if "ok" not in sh(f"test -x {exe} && echo ok").stdout:
        raise InputError(f"{serial} has no {exe}: build {BINARIES[m['backend']]} for android-arm64 and "
                         f"`adb push` it there (android_demo/README.md)")  # fmt: skip
    remote = f"{DEVICE_ROOT}/{d.resolve().name}"
    sh(f"mkdir -p {remote}")
    for name in [MANIFEST, *m["files"]]:
        progress(f"push {name}")
        r = subprocess.run([adb, "-s", serial, "push", str(d / name), f"{remote}/{name}"],
                           capture_output=True, text=True, timeout=3600)  # fmt: skip
        if r.returncode:
            raise InputError(f"adb push {d / name} to {serial} failed: {r.stderr.strip() or r.stdout.strip()}")
    cmd = device_command(m, remote, threads=threads, prompt_len=prompt_len, gen_len=gen_len)
    progress("run " + " ".join(cmd))
    r = sh(f"cd {remote} && LD_LIBRARY_PATH={DEVICE_ROOT}/bin " + " ".join(shlex.quote(c) for c in cmd))
    if r.returncode:
        tail = (r.stderr.strip() or r.stdout.strip())[-2000:]
        raise InputError(f"{BINARIES[m['backend']]} failed on {serial} (exit {r.returncode}): {tail}")
    out = d / "bench" / f"adb_{serial}.txt"
    out.parent.mkdir(exist_ok=True)
    out.write_text(r.stdout)
    return r.stdout
