"""Golden files for the Android core's tests: what the Python runtime does, for the Java loop to match.

``write(out)`` exports a tiny Gemma 3 (random weights, a SentencePiece tokenizer trained here with
Gemma's settings) to ONNX, runs it in ONNX Runtime through our Session and records every runtime
call the Session made (tokens, start position, the logits it got back) and the tokens it chose,
for greedy and seeded temperature / top-k / top-p sampling, a stop token and the max_seq_len
limit. It also records SentencePiece's (the C++ library's) ids and decoded text for a set of
strings on three tokenizers (the tiny one, one with SentencePiece's default NFKC normalisation and
no byte fallback, and the real Gemma 3 tokenizer when given), the chat prompts' ids, and copies of
the artifact with one defect each together with the error Python's manifest reader gives.

The Java tests (android_demo/core) replay the calls through a fake Runtime that checks each call
the Java generator makes against the recorded one, so the Java loop is checked against the Python
Session, not against itself.  ``python -m gemma_edge.android_golden OUT [--real-tokenizer FILE]``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

START, END = "<start_of_turn>", "<end_of_turn>"
CORPUS = (
    "The quick brown fox jumps over the lazy dog. Gemma runs on phones and edge boards.\n\n"
    "Sliding window attention keeps a ring buffer; the recurrence keeps a small state. "
    "Numbers 0123456789 and punctuation, of course! Export once, run everywhere. "
) * 20
TEXTS = [
    "the quick brown fox",
    "Hello   world,  spaced  out ",
    "  leading and trailing  ",
    "line one\n\nline two\nline three",
    "unicode: ünïcödé, 漢字, emoji 🙂 and a tab\t.",
    "<start_of_turn> is spelt out here, <bos> too",
    "numbers 0123456789 and $%^&*()",
    "a",
]
CHATS = [
    [{"role": "user", "content": "Tell me about the fox."}],
    [
        {"role": "user", "content": "  Hi!  "},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "What runs on phones?"},
    ],
]


def _train(path: Path, **kw) -> Path:
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS.split(". ")), model_writer=buf, vocab_size=320, model_type="bpe",
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
        unk_piece="<unk>", character_coverage=1.0, minloglevel=2, **kw,
    )  # fmt: skip
    path.write_bytes(buf.getvalue())
    return path


def gemma_style_tokenizer(path: Path) -> Path:
    """Gemma's SentencePiece settings: BPE, identity normalisation, no dummy prefix, whitespace kept,
    byte fallback, the turn markers as control pieces and newline runs as user-defined pieces."""
    return _train(path, normalization_rule_name="identity", add_dummy_prefix=False, remove_extra_whitespaces=False,
                  byte_fallback=True, control_symbols=[START, END], user_defined_symbols=["\n", "\n\n"])  # fmt: skip


def chat_ids(sp, bos: int, text: str) -> list[int]:
    """BOS, then the text with each turn marker as its control id and the rest through SentencePiece."""
    ids, rest = [bos], text
    while rest:
        hits = [(rest.find(m), m) for m in (START, END) if m in rest]
        at, mark = min(hits) if hits else (len(rest), None)
        ids += sp.encode(rest[:at]) if at else []
        if mark is None:
            break
        ids.append(sp.piece_to_id(mark))
        rest = rest[at + len(mark) :]
    return ids


def render_chat(messages: list[dict]) -> str:
    turns = "".join(f"{START}{'model' if m['role'] == 'assistant' else 'user'}\n{m['content'].strip()}{END}\n"
                    for m in messages)  # fmt: skip
    return turns + f"{START}model\n"


def _tokenizer_cases(path: Path) -> dict:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(path))
    cases = []
    for t in TEXTS:
        ids = sp.encode(t)
        cases.append({"text": t, "ids": ids, "decoded": sp.decode(ids)})
    chats = []  # only where the turn markers are pieces (Gemma's tokenizers)
    for msgs in CHATS if sp.piece_to_id(START) != sp.unk_id() else []:
        text = render_chat(msgs)
        chats.append({"messages": msgs, "text": text, "ids": chat_ids(sp, sp.bos_id(), text)})
    return {"file": path.name, "vocab_size": sp.get_piece_size(), "cases": cases, "chats": chats}


def _record(session, prompt, sampler, max_new: int, stops) -> dict:
    calls, forward = [], session._forward

    def recording(tokens, start):
        logits = forward(tokens, start)
        calls.append({"tokens": tokens[0].tolist(), "start": int(start), "logits": logits.float().tolist()})
        return logits

    session._forward = recording
    try:
        out = session.generate(prompt, max_new_tokens=max_new, sampler=sampler, stop_tokens=stops)
    finally:
        session._forward = forward
    spec = {"temperature": sampler.temperature, "top_k": sampler.top_k, "top_p": sampler.top_p, "seed": sampler.seed}
    return {"prompt": list(prompt), "sampler": spec, "max_new_tokens": max_new, "stop_tokens": list(stops),
            "calls": calls, "output": out}  # fmt: skip


def _generations(session, tok_path: Path) -> list[dict]:
    import sentencepiece as spm

    from gemma_edge.runtime_py.sampling import Sampler

    sp = spm.SentencePieceProcessor(model_file=str(tok_path))
    chat = chat_ids(sp, sp.bos_id(), render_chat(CHATS[0]))
    eos = session.special["eos"]
    gens = [_record(session, chat, Sampler(), 12, eos)]
    samplers = [
        dict(temperature=0.8, top_k=20, seed=7),
        dict(temperature=1.0, top_p=0.9, seed=8),
        dict(temperature=1.3, top_k=40, top_p=0.95, seed=123456789012345),
        dict(temperature=0.5),
    ]
    for kw in samplers:
        gens.append(_record(session, chat, Sampler(**kw), 10, eos))
    third = gens[0]["output"][2]  # greedy stops on its own third token when that is a stop token
    gens.append(_record(session, chat, Sampler(), 12, [third]))
    long_prompt = [sp.bos_id(), *sp.encode(CORPUS)][: session.max_seq_len - 4]  # runs into max_seq_len
    gens.append(_record(session, long_prompt, Sampler(temperature=0.9, seed=3), 20, []))
    return gens


def _corrupt(f: Path) -> None:
    b = bytearray(f.read_bytes())
    b[-1] ^= 0xFF
    f.write_bytes(bytes(b))


# name -> (what it breaks, words both readers' errors must contain)
DEFECTS = {
    "tampered": (lambda d: _corrupt(d / "model.onnx.data"), "model.onnx.data does not match its sha256"),
    "unlisted": (lambda d: (d / "extra.bin").write_bytes(b"not in the manifest"), "not in the manifest"),
    "missing_key": (lambda d: _edit(d, lambda m: m.pop("special_tokens")), "missing required keys special_tokens"),
    "future_version": (lambda d: _edit(d, lambda m: m.update(format_version=2)), "format_version 2"),
    "missing_file": (lambda d: (d / "tokenizer.model").unlink(), "tokenizer.model is missing"),
    "bad_json": (lambda d: (d / "manifest.json").write_text('{"format_version": 1,'), "is not valid JSON"),
    "bad_eos": (lambda d: _edit(d, lambda m: m["special_tokens"].update(eos="1")), "special_tokens.eos must be"),
}


def _edit(d: Path, f) -> None:
    m = json.loads((d / "manifest.json").read_text())
    f(m)
    (d / "manifest.json").write_text(json.dumps(m))


def _defects(art: Path, out: Path) -> list[dict]:
    from gemma_edge.models.errors import ArtifactError
    from gemma_edge.runtime_py.manifest import read_manifest

    cases = []
    for name, (defect, words) in DEFECTS.items():
        d = out / f"defect_{name}"
        shutil.copytree(art, d)
        defect(d)
        try:
            read_manifest(d)
        except ArtifactError as e:
            if words not in str(e):
                raise AssertionError(f"{name}: Python's error does not say {words!r}: {e}") from None
            cases.append({"dir": d.name, "words": words, "python_error": str(e).replace(str(d), "<dir>")})
            continue
        raise AssertionError(f"Python's manifest reader accepted the {name} defect")
    return cases


def write(out: Path, *, real_tokenizer: Path | None = None, progress=print) -> Path:
    """Write the golden files into ``out`` (new or empty); return the path of ``golden.json``. They
    are written into a sibling staging directory renamed into place at the end, so a failure leaves
    no half-written ``out``."""
    from gemma_edge.models.errors import InputError

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out} is not empty: the golden files go into a new or empty directory")
    if real_tokenizer is not None and not Path(real_tokenizer).is_file():
        raise InputError(f"--real-tokenizer {real_tokenizer} is not a file")
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        _write(stage, real_tokenizer, progress)
        if out.exists():
            out.rmdir()
        os.replace(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return out / "golden.json"


def _write(out: Path, real_tokenizer: Path | None, progress) -> None:
    import sentencepiece as spm

    from gemma_edge import models
    from gemma_edge.export import export
    from gemma_edge.runtime_py import load

    tok = gemma_style_tokenizer(out / "tiny_gemma.model")
    _train(out / "tiny_nfkc.model", byte_fallback=False)
    vocab = spm.SentencePieceProcessor(model_file=str(tok)).get_piece_size()
    progress("golden: exporting tiny Gemma 3 to ONNX")
    model = models.build(models.get_preset("tiny-gemma3").replace(vocab_size=vocab), seed=0)
    art = export(model, "onnx", "fp32", 64, "portable", out / "artifact", prefill_chunk=8, tokenizer_path=tok,
                 progress=lambda m: None)  # fmt: skip
    progress("golden: recording the Session's generations")
    session = load(art)
    golden = {
        "artifact": art.name,
        "generations": _generations(session, tok),
        "tokenizers": [_tokenizer_cases(tok), _tokenizer_cases(out / "tiny_nfkc.model")],
        "defects": _defects(art, out),
    }
    if real_tokenizer is not None:
        shutil.copy(real_tokenizer, out / "gemma3.model")
        golden["tokenizers"].append(_tokenizer_cases(out / "gemma3.model"))
    (out / "golden.json").write_text(json.dumps(golden))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--real-tokenizer", type=Path, help="a Gemma tokenizer.model to add to the tokenizer cases")
    a = p.parse_args(argv)
    print(write(a.out, real_tokenizer=a.real_tokenizer))


if __name__ == "__main__":
    main()
