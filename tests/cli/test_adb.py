"""``gemma-edge bench --adb``: a clear error with no device; with a device, the artifact pushed and
the runtime's own benchmark run. No phone is reachable here, so the attached case talks to a fake
``adb`` (a script that logs its calls): it checks our plumbing, not a device."""

import os
import stat
import subprocess
import sys

import pytest

from gemma_edge.adb_bench import DEVICE_ROOT, bench_on_device
from gemma_edge.models.errors import InputError

FAKE_ADB = """#!/bin/sh
echo "$@" >> "{log}"
case "$1" in
  devices) printf 'List of devices attached\\n{listed}\\n' ;;
  -s) shift 2
      case "$1" in
        push) exit 0 ;;
        shell) case "$2" in test*) echo ok ;; cd*) echo "decode: 42.0 tok/s" ;; esac ;;
      esac ;;
esac
"""


def fake_adb(tmp_path, listed: str):
    log = tmp_path / "adb.log"
    p = tmp_path / "adb"
    p.write_text(FAKE_ADB.format(log=log, listed=listed))
    p.chmod(p.stat().st_mode | stat.S_IEXEC)
    return str(p), log


def test_no_adb_says_no_device_is_attached(artifact, tmp_path):
    d = artifact("tiny-gemma3", backend="onnx")
    env = {**os.environ, "PATH": str(tmp_path)}  # no adb on PATH
    r = subprocess.run([sys.executable, "-m", "gemma_edge.cli", "bench", str(d), "--adb", "R5CT1234"],
                       capture_output=True, text=True, env=env)  # fmt: skip
    assert r.returncode == 2
    assert "no Android device 'R5CT1234' is attached" in r.stderr and "adb" in r.stderr


def test_unlisted_or_unauthorized_device_is_refused(artifact, tmp_path):
    d = artifact("tiny-gemma3", backend="onnx")
    adb, _ = fake_adb(tmp_path, "OTHER1\\tdevice\\nR5CT1234\\tunauthorized")
    with pytest.raises(InputError, match=r"'R5CT1234' is attached \(adb devices lists: OTHER1\)"):
        bench_on_device(d, "R5CT1234", adb=adb, progress=lambda m: None)


def test_attached_device_gets_every_file_and_the_runtimes_benchmark(artifact, tmp_path):
    d = artifact("tiny-gemma3", backend="onnx")
    adb, log = fake_adb(tmp_path, "R5CT1234\\tdevice")
    out = bench_on_device(d, "R5CT1234", adb=adb, progress=lambda m: None)
    assert "42.0 tok/s" in out and (d / "bench/adb_R5CT1234.txt").read_text() == out
    calls = log.read_text().splitlines()
    pushed = {c.split()[3].rsplit("/", 1)[1] for c in calls if " push " in c}
    assert pushed == {p.name for p in d.iterdir() if p.is_file()}
    run = [c for c in calls if "model_benchmark" in c and "shell cd" in c]
    assert run and f"{DEVICE_ROOT}/bin/model_benchmark -i {DEVICE_ROOT}/{d.name} -l 128 -g 128" in run[0]
