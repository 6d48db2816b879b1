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
    out = tmp_path / "new"
    try:  # a bad --real-tokenizer is refused before anything is written
        android_golden.write(out, real_tokenizer=tmp_path / "missing.model")
    except InputError as e:
        assert "missing.model is not a file" in str(e)
    else:
        raise AssertionError("accepted a missing --real-tokenizer")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["x"]


def test_app_resources_are_well_formed_and_referenced_ids_exist():
    """What can be checked of the app module without the Android SDK: its XML parses, and every
    R.id / R.string the Java code names is declared (the SDK's resource compiler would refuse it)."""
    import xml.etree.ElementTree as ET

    app = ROOT / "android_demo/app/src/main"
    xml = list(app.rglob("*.xml"))
    assert len(xml) >= 3
    for f in xml:
        ET.parse(f)
    layout = "".join(f.read_text() for f in (app / "res/layout").glob("*.xml"))
    strings = (app / "res/values/strings.xml").read_text()
    java = "".join(f.read_text() for f in app.rglob("*.java"))
    ids, names = set(re.findall(r"R\.id\.(\w+)", java)), set(re.findall(r"R\.string\.(\w+)", java))
    assert ids and names
    assert not {i for i in ids if f'@+id/{i}"' not in layout}
    assert not {n for n in names if f'name="{n}"' not in strings}
