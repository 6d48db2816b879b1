"""SentencePiece tokenizer with each family's BOS/EOS conventions and EmbeddingGemma's prompts."""

from __future__ import annotations

from pathlib import Path

import sentencepiece as spm

from .errors import CheckpointError, InputError

__all__ = ["Tokenizer", "EMBEDDING_PROMPTS"]

# REFERENCE §3 (HF convert script task_prompts, matching the model card).
EMBEDDING_PROMPTS = {
    "query": "task: search result | query: ",
    "document": "title: none | text: ",
    "BitextMining": "task: search result | query: ",
    "Clustering": "task: clustering | query: ",
    "Classification": "task: classification | query: ",
    "InstructionRetrieval": "task: code retrieval | query: ",
    "MultilabelClassification": "task: classification | query: ",
    "PairClassification": "task: sentence similarity | query: ",
    "Reranking": "task: search result | query: ",
    "Retrieval": "task: search result | query: ",
    "Retrieval-query": "task: search result | query: ",
    "Retrieval-document": "title: none | text: ",
    "STS": "task: sentence similarity | query: ",
    "Summarization": "task: summarization | query: ",
    "QuestionAnswering": "task: question answering | query: ",
    "FactChecking": "task: fact checking | query: ",
}


class Tokenizer:
    """Generative Gemma adds BOS only; EmbeddingGemma adds BOS and EOS and pads on the right."""

    def __init__(self, path: str | Path, family: str, prompts: dict[str, str] | None = None) -> None:
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"missing tokenizer file {path}")
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.Load(str(path))
        except Exception as e:
            raise CheckpointError(f"{path} is not a valid SentencePiece model: {e}") from None
        self.path, self.family = path, family
        self.add_eos = family == "embeddinggemma"
        self.prompts = dict(EMBEDDING_PROMPTS if prompts is None else prompts)

    @property
    def bos_id(self) -> int:
        return self.sp.bos_id()

    @property
    def eos_id(self) -> int:
        return self.sp.eos_id()

    @property
    def pad_id(self) -> int:
        return max(self.sp.pad_id(), 0)

    @property
    def vocab_size(self) -> int:
        return self.sp.GetPieceSize()

    def encode(self, text: str, *, add_bos: bool = True, add_eos: bool | None = None) -> list[int]:
        ids = self.sp.EncodeAsIds(text)
        if add_bos:
            ids = [self.bos_id, *ids]
        if self.add_eos if add_eos is None else add_eos:
            ids = [*ids, self.eos_id]
        return ids

    def decode(self, ids: list[int]) -> str:
        return self.sp.DecodeIds([int(i) for i in ids])

    def encode_batch(self, texts: list[str], *, prompt: str | None = None, max_len: int | None = None):
        """Right-padded ids and attention mask (lists of lists) for the encoder."""
        prefix = ""
        if prompt is not None:
            if prompt not in self.prompts:
                raise InputError(f"unknown prompt name {prompt!r}; known: {', '.join(self.prompts)}")
            prefix = self.prompts[prompt]
        seqs = [self.encode(prefix + t) for t in texts]
        if max_len is not None:
            seqs = [s[:max_len] for s in seqs]
        n = max(len(s) for s in seqs)
        ids = [s + [self.pad_id] * (n - len(s)) for s in seqs]
        mask = [[1] * len(s) + [0] * (n - len(s)) for s in seqs]
        return ids, mask
