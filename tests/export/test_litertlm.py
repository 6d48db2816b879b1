"""LiteRT-LM (litert-lm-api, the engine LiteRT apps ship with) runs our LiteRT export's
model.litertlm: the same greedy text as our Session on the .tflite, for Gemma 3 (local rings and
global caches) and Gemma 2, with the ring wrapping several times."""

import pytest

from gemma_edge import models
from gemma_edge.export import export
from gemma_edge.models.errors import ArtifactError
from gemma_edge.runtime_py import load, load_litertlm
from gemma_edge.runtime_py.manifest import read_manifest

import hf_checkpoints

PROMPT = "the quick brown fox jumps over the lazy dog. Gemma runs on phones"


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return hf_checkpoints.write_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.model")


@pytest.mark.parametrize("preset", ["tiny-gemma3", pytest.param("tiny-gemma2", marks=pytest.mark.slow)])
def test_litertlm_generates_what_our_session_generates(preset, tok, tmp_path):
    sp = models.Tokenizer(tok, "gemma3")
    model = models.build(models.get_preset(preset).replace(vocab_size=sp.vocab_size), seed=0)
    d = export(model, "litert", "fp32", 96, "portable", tmp_path / "art", prefill_chunk=8, tokenizer_path=tok,
               verify=False, progress=lambda m: None)  # fmt: skip
    m = read_manifest(d)  # model.litertlm is listed and hashed
    assert "model.litertlm" in m["files"] and m["litertlm"]["signatures"][-1] == "prefill_1"
    assert "chunk_8" in m["litertlm"]["signatures"] and "prefill_8" not in m["litertlm"]["signatures"]
    ours = load(d)
    ids = ours.generate(PROMPT, max_new_tokens=40, stop_tokens=m["litertlm"]["stop_tokens"])
    assert len(ids) >= 20  # enough steps for the window-8 ring to wrap several times
    want = ours.tokenizer.decode([i for i in ids if i not in m["litertlm"]["stop_tokens"]])
    lm = load_litertlm(d, threads=2)
    streamed = []
    got = lm.generate(PROMPT, max_new_tokens=40, on_text=streamed.append)
    assert got == want and len(streamed) == len(ids) - (ids[-1] in m["litertlm"]["stop_tokens"])


def test_an_artifact_without_a_bundle_is_refused(artifact):
    d = artifact("tiny-gemma3", backend="litert")  # no tokenizer: no bundle
    with pytest.raises(ArtifactError, match=r"has no model\.litertlm"):
        load_litertlm(d)


@pytest.mark.slow
def test_litertlm_on_the_real_gemma3_270m(tmp_path):
    """The real model's int4 .tflite keeps its weights after the flatbuffer (offset buffers, as
    ai-edge-quantizer writes them); the bundle must carry them: LiteRT-LM's text == our Session's."""
    from gemma_edge import fixtures
    from gemma_edge.sources import gguf_tokenizer_file

    src = fixtures.real_gemma3_270m()
    d = export(models.load(src), "litert", "int4", 256, "portable", tmp_path / "art",
               tokenizer_path=gguf_tokenizer_file(src), verify=False, progress=lambda m: None)  # fmt: skip
    stops = read_manifest(d)["litertlm"]["stop_tokens"]
    ours = load(d, threads=2)
    prompt = "To be, or not to be, that is the question:"
    ids = ours.generate(prompt, max_new_tokens=24, stop_tokens=stops)
    want = ours.tokenizer.decode([i for i in ids if i not in stops])
    assert len(want) > 20 and load_litertlm(d, threads=2).generate(prompt, max_new_tokens=24) == want
