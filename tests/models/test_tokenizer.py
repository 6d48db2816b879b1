import pytest

from gemma_edge import models


@pytest.fixture(scope="module")
def spm_path(tmp_path_factory):
    import hf_checkpoints

    return hf_checkpoints.write_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.model")


def test_generative_family_adds_bos_only(spm_path):
    tok = models.Tokenizer(spm_path, "gemma3")
    ids = tok.encode("the quick fox")
    assert (tok.pad_id, tok.eos_id, tok.bos_id) == (0, 1, 2)
    assert ids[0] == tok.bos_id and ids[-1] != tok.eos_id
    assert tok.decode(ids[1:]) == "the quick fox"


def test_embedding_family_adds_eos_and_pads_right(spm_path):
    tok = models.Tokenizer(spm_path, "embeddinggemma")
    ids, mask = tok.encode_batch(["the quick brown fox", "a"], prompt="STS")
    assert len(ids[0]) == len(ids[1]) and ids[1][-1] == tok.pad_id and mask[1][-1] == 0
    assert ids[0][-1] == tok.eos_id and ids[0][0] == tok.bos_id
    with pytest.raises(models.InputError, match="unknown prompt name 'nope'"):
        tok.encode_batch(["x"], prompt="nope")
