"""Artifact directories under concurrent, interrupted and killed exports: never a half-written or
silently replaced artifact, no staging dir left for good, the user's umask."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gemma_edge.export.artifact import staging_dir
from gemma_edge.models import ArtifactError


def _leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


def test_an_artifact_that_appeared_meanwhile_is_not_replaced(tmp_path):
    out = tmp_path / "a"
    with pytest.raises(ArtifactError, match="appeared while this export ran"):
        with staging_dir(out) as tmp:
            (tmp / "mine").write_text("late")
            out.mkdir()  # the other export finished first
            (out / "theirs").write_text("first")
    assert [p.name for p in out.iterdir()] == ["theirs"] and not _leftovers(tmp_path, "a")


def test_overwrite_of_a_file_leaves_nothing_behind(tmp_path):
    out = tmp_path / "a"
    out.write_text("a file")
    with staging_dir(out, overwrite=True) as tmp:
        (tmp / "x").write_text("1")
    assert (out / "x").read_text() == "1" and not _leftovers(tmp_path, "a")


def test_staging_dirs_of_killed_exports_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".a.{dead.stdout.strip()}.k1ll3d.tmp"
    stale.mkdir()
    alive = tmp_path / f".a.{os.getpid()}.running.tmp"  # an export still running: kept
    alive.mkdir()
    with staging_dir(tmp_path / "a"):
        pass
    assert _leftovers(tmp_path, "a") == [alive.name]


def test_a_failed_export_leaves_no_parent_it_created(tmp_path):
    with pytest.raises(RuntimeError):
        with staging_dir(tmp_path / "new" / "deeper" / "a"):
            raise RuntimeError("export failed")
    assert list(tmp_path.iterdir()) == []


def test_artifact_dir_takes_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        with staging_dir(tmp_path / "a"):
            pass
    finally:
        os.umask(old)
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o750


def test_output_over_the_current_directory_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for out in (".", "..", str(tmp_path)):
        with pytest.raises(ArtifactError, match="is the current directory or above it"):
            with staging_dir(Path(out), overwrite=True):
                pass


def test_unwritable_output_is_one_clear_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ArtifactError, match="cannot create the output directory"):
        with staging_dir(tmp_path / "file" / "a"):
            pass


def _export_cmd(out: Path) -> list[str]:
    return [sys.executable, "-m", "gemma_edge.cli", "export", "tiny-gemma3", "--backend", "onnx", "--no-verify",
            "--max-seq-len", "64", "-o", str(out)]  # fmt: skip


def _wait_for_staging(parent: Path, name: str, proc, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while not _leftovers(parent, name):
        assert proc.poll() is None and time.monotonic() < end, "the export never started staging"
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_mid_export_cleans_up(tmp_path, sig):
    out = tmp_path / "a"
    # A shell's background job (nohup, CI) starts with SIGINT ignored, and Python then keeps it
    # ignored: give the export the disposition an interactive user's has.
    proc = subprocess.Popen(_export_cmd(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    _wait_for_staging(tmp_path, "a", proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err
    assert not out.exists() and not _leftovers(tmp_path, "a")


@pytest.mark.slow
def test_sigkill_at_random_points_twenty_times(tmp_path):
    """The target is absent or a complete, loadable artifact; the next export cleans up."""
    from gemma_edge.runtime_py import load

    out, rng, mid = tmp_path / "a", random.Random(0), 0
    for i in range(20):
        proc = subprocess.Popen(_export_cmd(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if i % 2:  # half the kills land while the artifact is being written, at a random point of it
            _wait_for_staging(tmp_path, "a", proc)
            time.sleep(rng.uniform(0.0, 4.0))
        else:  # the other half anywhere from start-up to after the end
            time.sleep(rng.uniform(0.5, 12.0))
        mid += bool(_leftovers(tmp_path, "a")) and proc.poll() is None
        proc.kill()
        proc.wait()
        if out.exists():
            load(out).generate([2, 3], max_new_tokens=2)
            import shutil

            shutil.rmtree(out)
    assert mid >= 8, f"only {mid} of 20 kills hit an export while it was staging"
    subprocess.run(_export_cmd(out), check=True, capture_output=True)
    assert load(out) and not _leftovers(tmp_path, "a")


def test_two_exports_to_the_same_output_at_once(tmp_path):
    """Two real export processes, one -o, no --overwrite: one artifact, the other process refused."""
    from gemma_edge.runtime_py import load

    out = tmp_path / "a"
    procs = [subprocess.Popen(_export_cmd(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]  # fmt: skip
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    err = next(e for rc, e in results if rc == 2)
    assert ("appeared while this export ran" in err or "already exists" in err) and "Traceback" not in err
    load(out).generate([2, 3], max_new_tokens=2)
    assert not _leftovers(tmp_path, "a")
