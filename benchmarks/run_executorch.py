"""Export a preset-shaped model (random init) to ExecuTorch and benchmark it under a device profile.

    python benchmarks/run_executorch.py gemma3-1b --quant 8da4w+emb4 --max-seq-len 8192
    python benchmarks/run_executorch.py recurrentgemma-2b --quant 8da4w --max-seq-len 4224 --no-verify

The export runs in a child process so its peak resident memory is measured on its own; results go
to benchmarks/results/<name>.{json,md,png}. Speed figures are medians over repeats (noisy machine:
compare within one run).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent


def export_child(args) -> dict:
    code = f"""
import json, time
from gemma_edge import models
from gemma_edge.export import export
t0 = time.perf_counter()
m = models.build({args.preset!r}, seed=0)
export(m, "executorch", {args.quant!r}, {args.max_seq_len}, {args.ops!r}, {str(args.out)!r}, overwrite=True,
       verify={not args.no_verify}, inplace=True, reference=lambda: models.build({args.preset!r}, seed=0),
       source={{"preset": {args.preset!r}, "seed": 0}},
       progress=lambda s: print(f"{{time.perf_counter() - t0:7.1f}}s {{s}}", flush=True))
"""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code])
    if r.returncode:
        sys.exit(f"export failed with exit code {r.returncode}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB -> MiB
    return {"export_wall_s": time.perf_counter() - t0, "export_peak_rss_mib": peak}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("preset")
    p.add_argument("--quant", default="8da4w")
    p.add_argument("--ops", default="portable")
    p.add_argument("--max-seq-len", type=int, default=8192)
    p.add_argument("--profile", default="phone-mid")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-verify", action="store_true")
    p.add_argument("--name", help="result file stem (default: executorch_<preset>_<quant>_<ops>)")
    p.add_argument("--skip-export", action="store_true", help="benchmark the existing artifact again")
    args = p.parse_args()
    name = args.name or f"executorch_{args.preset}_{args.quant.replace('+', '-')}_{args.ops}"
    args.out = Path("artifacts") / name
    if args.skip_export:  # keep the export figures recorded by the run that exported
        old = json.loads((HERE / "results" / f"{name}.json").read_text())
        exp = {k: old[k] for k in ("export_wall_s", "export_peak_rss_mib")}
    else:
        exp = export_child(args)
    print(f"export: {exp['export_wall_s']:.0f} s, peak RSS {exp['export_peak_rss_mib']:.0f} MiB", flush=True)

    from gemma_edge import models
    from gemma_edge.runtime_py.bench import benchmark, markdown, write_reports

    res = benchmark(args.out, args.profile, repeats=args.repeats)
    manifest = json.loads((args.out / "manifest.json").read_text())
    cfg = models.get_preset(args.preset)
    res.update(exp)
    res["state_bytes_at_max_seq_len_fp32"] = models.state_bytes(cfg, args.max_seq_len, kv_bytes=4)
    res["parity"] = manifest.get("parity")
    res["export_timings"] = manifest.get("export_timings")
    paths = write_reports(res, HERE / "results" / name)
    extra = (
        f"\nExport: {exp['export_wall_s']:.0f} s wall, peak RSS {exp['export_peak_rss_mib'] / 1024:.2f} GiB. "
        f"State at max_seq_len {args.max_seq_len}: {res['state_bytes_at_max_seq_len_fp32']['total'] / 2**20:.1f} MiB "
        f"(fp32).\n"
    )
    md = markdown(res) + extra
    paths["md"].write_text(md)
    for suffix, path in paths.items():
        final = HERE / "results" / f"{name}.{suffix}"
        path.replace(final)
    (HERE / "results" / name).rmdir()
    print(md)


if __name__ == "__main__":
    main()
