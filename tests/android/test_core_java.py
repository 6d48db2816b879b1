"""The Android app's plain-Java core (android_demo/core), run with javac and JUnit against golden
files our Python runtime writes: its generation loop, sampler, tokenizer and manifest reader must
do what the Python Session and SentencePiece do."""

import re
import subprocess
from pathlib import Path

from gemma_edge import android_golden, fixtures
from gemma_edge.sources import gguf_tokenizer_file

ROOT = Path(__file__).resolve().parents[2]


def test_java_core_matches_the_python_session(tmp_path):
    tok = gguf_tokenizer_file(fixtures.real_gemma3_270m())  # the real Gemma 3 tokenizer, too
    golden = android_golden.write(tmp_path / "golden", real_tokenizer=tok, progress=lambda m: None)
    r = subprocess.run([str(ROOT / "android_demo/core/run_tests.sh"), str(golden.parent)],
                       capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    n = re.search(r"OK \((\d+) tests\)", r.stdout)
    assert n and int(n.group(1)) >= 12, r.stdout[-2000:]


def test_golden_writer_refuses_a_used_directory(tmp_path):
    from gemma_edge.models.errors import InputError

    (tmp_path / "x").write_text("")
    try:
        android_golden.write(tmp_path)
    except InputError as e:
        assert "is not empty" in str(e)
    else:
        raise AssertionError("wrote golden files into a non-empty directory")
