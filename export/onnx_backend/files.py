"""The artifact's other files: the ORT-format model and onnxruntime-genai's genai_config.json."""

from __future__ import annotations

from pathlib import Path

from .wrappers import GENAI_RING_SLACK, MODEL_FILE


def write_ort_format(onnx_path: Path, ort_path: Path) -> None:
    """The ORT-format (flatbuffer) model ONNX Runtime Mobile loads, optimized at the extended level:
    graph fusions that hold on any CPU, none of the x86-specific layout changes of the full level."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(ort_path)
    so.add_session_config_entry("session.save_model_format", "ORT")
    ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])


GENAI_TYPES = {"gemma2": "gemma2", "gemma3": "gemma3_text"}


def genai_config(cfg, max_seq_len: int, metadata: dict) -> dict:
    """onnxruntime-genai's genai_config.json for a Gemma 2 / Gemma 3 artifact: shared past/present
    buffers (max_seq_len slots for global layers, window + GENAI_RING_SLACK for local ones)."""
    local = [i for i, k in enumerate(cfg.layer_kinds) if k == "local"]
    decoder = {
        "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
        "filename": MODEL_FILE, "head_size": cfg.head_dim, "hidden_size": cfg.d_model,
        "num_attention_heads": cfg.num_heads, "num_hidden_layers": cfg.num_layers,
        "num_key_value_heads": cfg.num_kv_heads,
        "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                   "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
        "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value"},
    }  # fmt: skip
    if local:
        decoder["sliding_window"] = {
            "window_size": cfg.window, "slide_key_value_cache": False, "slide_inputs": False, "layers": local,
            "cache_slack": GENAI_RING_SLACK,
        }  # fmt: skip
    return {
        "model": {
            "bos_token_id": metadata["get_bos_id"], "eos_token_id": metadata["get_eos_ids"], "pad_token_id": 0,
            "context_length": max_seq_len, "type": GENAI_TYPES[cfg.family], "vocab_size": cfg.vocab_size,
            "decoder": decoder,
        },
        "search": {
            "max_length": max_seq_len, "past_present_share_buffer": True, "do_sample": False, "num_beams": 1,
            "num_return_sequences": 1, "min_length": 0, "top_k": 1, "top_p": 1.0, "temperature": 1.0,
            "repetition_penalty": 1.0, "length_penalty": 1.0, "diversity_penalty": 0.0, "no_repeat_ngram_size": 0,
            "early_stopping": True,
        },
    }  # fmt: skip
