"""``model.litertlm``: the LiteRT artifact bundled for LiteRT-LM (the engine behind Google's AI Edge
Gallery), with litert-lm-builder: the model, the SentencePiece tokenizer, LlmMetadata (start, stop
and pad tokens, context size, model type) and ExecutorMetadata (what each state tensor is).

What LiteRT-LM needs beyond our ``model.tflite`` (found by running litert-lm-api 0.18.1 on CPU):

- ExecutorMetadata naming every ``kv_cache_k_i`` / ``kv_cache_v_i`` a local (sliding-window ring)
  or global key/value cache with its sequence axis 2, and RecurrentGemma's ``conv_state_i`` /
  ``rglru_state_i`` as linear-attention state: without it LiteRT-LM sizes the context from
  ``kv_cache_k_0``, which for Gemma 2/3 is the local ring (the window), and stops there.
- A prefill it can drive without padding: LiteRT-LM fills the unused slots of a fixed-size
  ``prefill_T`` chunk with pad tokens at position 0, which our cache writes (a slice update at the
  chunk's first position, ring slots from contiguous positions) do not tolerate, silently. The bundled
  copy of the model therefore has a signature ``prefill_1`` over the decode subgraph and the
  ``prefill_T`` signature renamed ``chunk_T`` (hidden from LiteRT-LM); our Session keeps reading
  ``model.tflite`` with its chunked prefill. Cost: LiteRT-LM prefills one token per call.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from gemma_edge.models.errors import ExportError

__all__ = ["LITERTLM_FILE", "write_litertlm", "bundle_tflite"]

LITERTLM_FILE = "model.litertlm"


def _key(s) -> str:
    return s.signatureKey.decode() if isinstance(s.signatureKey, bytes) else s.signatureKey


def bundle_tflite(src: Path, dst: Path) -> list[str]:
    """Write ``src`` with a ``prefill_1`` signature aliasing ``decode`` and every other ``prefill_T``
    renamed ``chunk_T``; return the signature names. Buffers keep TFLite's 16-byte alignment."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as S

    raw = bytearray(src.read_bytes())
    model = S.ModelT.InitFromPackedBuf(raw, 0)
    expected = 0
    for buf in model.buffers:  # data stored after the flatbuffer (offset/size), as ai-edge-quantizer
        if buf.offset > 1:  # writes it: inline it, the offsets would not survive the repack
            buf.data = np.frombuffer(raw, np.uint8, count=buf.size, offset=buf.offset)
            buf.offset = buf.size = 0
        expected += 0 if buf.data is None else len(buf.data)
    sigs = {_key(s): s for s in model.signatureDefs}
    if "prefill_1" not in sigs:
        alias = S.SignatureDefT()
        dec = sigs["decode"]
        alias.inputs, alias.outputs, alias.subgraphIndex, alias.signatureKey = (
            dec.inputs, dec.outputs, dec.subgraphIndex, "prefill_1")  # fmt: skip
        model.signatureDefs.append(alias)
    for k, s in sigs.items():
        if k.startswith("prefill_") and k != "prefill_1":
            s.signatureKey = "chunk_" + k[len("prefill_") :]

    def pack_buffer(self, builder):  # BufferT.Pack, with the data vector aligned to 16 bytes
        data = None
        if self.data is not None:
            x = np.asarray(self.data, dtype=np.uint8)
            builder.StartVector(1, x.size, 16)
            builder.head = builder.head - x.size
            builder.Bytes[builder.Head() : builder.Head() + x.size] = x.tobytes()
            builder.vectorNumElems = x.size
            data = builder.EndVector()
        S.BufferStart(builder)
        if data is not None:
            S.BufferAddData(builder, data)
        S.BufferAddOffset(builder, self.offset)
        S.BufferAddSize(builder, self.size)
        return S.BufferEnd(builder)

    original = S.BufferT.Pack
    S.BufferT.Pack = pack_buffer
    try:
        b = flatbuffers.Builder(src.stat().st_size + (1 << 20))
        b.Finish(model.Pack(b), file_identifier=b"TFL3")
    finally:
        S.BufferT.Pack = original
    dst.write_bytes(b.Output())
    check = S.ModelT.InitFromPackedBuf(bytearray(dst.read_bytes()), 0)
    got = sum(0 if buf.data is None else len(buf.data) for buf in check.buffers)
    if got != expected or any(buf.offset > 1 for buf in check.buffers):
        raise ExportError(f"the LiteRT-LM copy of {src.name} holds {got} bytes of weights, the original {expected}")
    return [_key(s) for s in model.signatureDefs]


def stop_tokens(special: dict, tok_path: Path) -> list[int]:
    """The manifest's EOS ids that this tokenizer has as control pieces (Gemma's <eos>,
    <end_of_turn>), plus its own EOS: LiteRT-LM stops on ids, a trained tiny tokenizer may hold an
    ordinary piece at Gemma's <end_of_turn> id."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tok_path))
    ids = [i for i in special["eos"] if i < sp.get_piece_size() and sp.is_control(i)]
    return ids + ([sp.eos_id()] if sp.eos_id() >= 0 and sp.eos_id() not in ids else [])


def _llm_metadata(family: str, special: dict, max_seq_len: int, stops: list[int]):
    from litert_lm_builder.runtime.proto import llm_metadata_pb2 as L

    md = L.LlmMetadata()
    md.start_token.token_ids.ids.append(special["bos"])
    for e in stops:
        md.stop_tokens.add().token_ids.ids.append(e)
    md.pad_token.token_ids.ids.append(special.get("pad", 0))
    md.max_num_tokens = max_seq_len
    (md.llm_model_type.gemma3 if family == "gemma3" else md.llm_model_type.generic_model).SetInParent()
    md.supports_thinking = md.supports_function_calling = False  # validate_metadata requires both set
    return md


def _executor_metadata(decode_inputs: list[dict], max_seq_len: int, window: int | None):
    from litert_lm_builder.runtime.proto import executor_metadata_pb2 as E

    em = E.ExecutorMetadata()
    lem, T = em.llm_executor_metadata, E.StateBuffer
    for spec in decode_inputs:
        name = spec["name"]
        if name.startswith(("conv_state_", "rglru_state_")):
            kind = T.TYPE_LINEAR_ATTENTION
        elif name.startswith(("kv_cache_k_", "kv_cache_v_")):
            local, key = spec["shape"][2] < max_seq_len, name.startswith("kv_cache_k_")
            kinds = {(True, True): T.TYPE_LOCAL_KEY_CACHE, (True, False): T.TYPE_LOCAL_VALUE_CACHE,
                     (False, True): T.TYPE_GLOBAL_KEY_CACHE, (False, False): T.TYPE_GLOBAL_VALUE_CACHE}  # fmt: skip
            kind = kinds[(local, key)]
        else:
            continue
        sb = lem.state_buffers.add()
        sb.prefill_input_name = sb.prefill_output_name = sb.decode_input_name = sb.decode_output_name = name
        sb.type = kind
        if kind != T.TYPE_LINEAR_ATTENTION:
            sb.sequence_axis, sb.maximum_sequence_length = 2, spec["shape"][2]
    if window:
        lem.attention_mask_settings.sliding_window_size = window
    return em


def write_litertlm(d: Path, *, family: str, special: dict, max_seq_len: int, decode_inputs: list[dict],
                   window: int | None, tokenizer: Path, model_file: str = "model.tflite") -> dict:  # fmt: skip
    """Bundle ``d/model_file`` and ``tokenizer`` into ``d/model.litertlm``; return the manifest entry."""
    from litert_lm_builder import litertlm_builder as B
    from litert_lm_builder import litertlm_core

    stops = stop_tokens(special, tokenizer)
    with tempfile.TemporaryDirectory(dir=d) as td:
        t = Path(td)
        sigs = bundle_tflite(d / model_file, t / "model.tflite")
        (t / "llm.pb").write_bytes(_llm_metadata(family, special, max_seq_len, stops).SerializeToString())
        (t / "exec.pb").write_bytes(_executor_metadata(decode_inputs, max_seq_len, window).SerializeToString())
        b = B.LitertLmFileBuilder()
        b.add_system_metadata(B.Metadata(key="Authors", value="gemma-edge", dtype=B.DType.STRING))
        b.add_llm_metadata(str(t / "llm.pb"))
        b.add_executor_metadata(str(t / "exec.pb"))
        b.add_sentencepiece_tokenizer(str(tokenizer))
        b.add_tflite_model(str(t / "model.tflite"), B.TfLiteModelType.PREFILL_DECODE, backend_constraint="cpu")
        with litertlm_core.open_file(str(d / LITERTLM_FILE), "wb") as f:
            b.build(f, validate_metadata=True)
    return {"file": LITERTLM_FILE, "signatures": sigs, "stop_tokens": stops, "prefill": "prefill_1 (decode subgraph)"}
