"""gemma-edge eval: llama-perplexity's scheme checked against a hand computation, and the same
figures through an artifact's runtime as through the eager model."""

import json
import math

import pytest
import torch

from gemma_edge import models
from gemma_edge.cli import main
from gemma_edge.models import InputError
from gemma_edge.runtime_py import load
from gemma_edge.runtime_py.evaluate import chunks, evaluate


def _ids(n, vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [2, *torch.randint(3, vocab, (n - 1,), generator=g).tolist()]


def test_perplexity_by_hand():
    m = models.build("tiny-gemma3", seed=0)
    ids = _ids(40, m.config.vocab_size)
    n_ctx = 16
    # By hand: chunk i is ids[16i:16i+16] with BOS first; positions 8..14 score tokens 9..15.
    nll, shifted = [], []
    for i in range(2):
        c = [2, *ids[i * n_ctx + 1 : (i + 1) * n_ctx]]
        logp = m(torch.tensor([c]))[0].double().log_softmax(-1)
        nll += [-logp[j, c[j + 1]].item() for j in range(8, 15)]
        shifted += [-logp[j, c[j + 1]].item() for j in range(7, 14)]  # one position early
    res = evaluate(m, ids, n_ctx=n_ctx, progress=False)
    assert res["chunks"] == 2 and res["scored_tokens"] == 14
    # Equal up to fp32 rounding (the head runs on all 16 rows here, on the scored ones there, and
    # the BLAS blocking differs: ~2e-8 seen); a scheme off by one position is off by far more.
    assert res["ppl"] == pytest.approx(math.exp(sum(nll) / len(nll)), rel=1e-6)
    assert res["ppl"] != pytest.approx(math.exp(sum(shifted) / len(shifted)), rel=1e-3)


def test_chunk_scheme_and_errors():
    assert chunks(list(range(10)), 4, bos=2) == [[2, 1, 2, 3], [2, 5, 6, 7]]
    assert chunks(list(range(10)), 4, bos=2, max_chunks=1) == [[2, 1, 2, 3]]
    with pytest.raises(InputError, match="fewer than one chunk"):
        chunks([1, 2, 3], 4, bos=2)


def test_session_matches_eager_and_kl(artifact):
    d = artifact("tiny-gemma3", "fp32", "portable", "onnx")
    m = models.build("tiny-gemma3", seed=0)
    ids = _ids(70, m.config.vocab_size, seed=1)
    eager = evaluate(m, ids, n_ctx=32, progress=False)
    art = evaluate(load(d), ids, n_ctx=32, reference=m, progress=False)
    assert art["ppl"] == pytest.approx(eager["ppl"], rel=1e-4)
    assert art["kl_mean"] < 1e-6 and art["top1"] == 1.0 and art["ppl_ratio"] == pytest.approx(1.0, rel=1e-4)
    q = evaluate(models.build("tiny-gemma3", seed=1), ids, n_ctx=32, reference=m, progress=False)
    assert q["kl_mean"] > 0.01 and q["top1"] < 1.0  # a different model is seen as one


def test_cli_eval_reports(hf_causal, tmp_path, capsys):
    d, _ = hf_causal("tiny-gemma3")
    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 40)
    assert main(["eval", str(d), "--text", str(text), "--ctx", "32", "--chunks", "3", "-o", str(tmp_path / "r")]) == 0
    res = json.loads((tmp_path / "r" / "eval.json").read_text())
    assert res["chunks"] == 3 and res["scored_tokens"] == 3 * 15 and res["ppl"] > 1
    assert "perplexity" in (tmp_path / "r" / "eval.md").read_text()
    assert main(["eval", str(d), "--text", str(tmp_path / "missing.txt")]) == 2
