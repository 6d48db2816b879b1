"""Presets for every released size (REFERENCE.md §1-3) and one tiny preset per family for tests."""

from __future__ import annotations

from .config import ModelConfig
from .errors import ConfigError

__all__ = ["PRESETS", "get_preset", "DEFAULT_PRESET"]

DEFAULT_PRESET = "gemma3-270m"


def gemma2_kinds(n: int) -> tuple[str, ...]:
    # REFERENCE §1b: layer i is local iff i is even.
    return tuple("local" if i % 2 == 0 else "global" for i in range(n))


def gemma3_kinds(n: int, pattern: int = 6) -> tuple[str, ...]:
    # REFERENCE §1b: layer i is global iff (i + 1) % 6 == 0.
    return tuple("global" if (i + 1) % pattern == 0 else "local" for i in range(n))


def griffin_kinds(n: int) -> tuple[str, ...]:
    # REFERENCE §2a: pattern R, R, A repeating; Griffin's attention is always local.
    return tuple("local" if i % 3 == 2 else "recurrent" for i in range(n))


def matryoshka_dims(out: int) -> tuple[int, ...]:
    """EmbeddingGemma's truncation sizes (REFERENCE §3) that fit an output of ``out``."""
    return tuple(m for m in (768, 512, 256, 128) if m <= out) or (out,)


def _gemma2(vocab, d, n, h, kv, hd, ffn, qs, *, window=4096, ctx=8192) -> ModelConfig:
    return ModelConfig(
        family="gemma2", vocab_size=vocab, d_model=d, layer_kinds=gemma2_kinds(n), num_heads=h,
        num_kv_heads=kv, head_dim=hd, ffn_dim=ffn, window=window, max_seq_len=ctx, query_scale=qs,
        rope_base={"local": 10_000.0, "global": 10_000.0}, attn_softcap=50.0, final_softcap=30.0,
    )  # fmt: skip


def _gemma3(vocab, d, n, h, kv, hd, ffn, qs, window, ctx, *, scaling=None, pattern=6) -> ModelConfig:
    return ModelConfig(
        family="gemma3", vocab_size=vocab, d_model=d, layer_kinds=gemma3_kinds(n, pattern),
        num_heads=h, num_kv_heads=kv, head_dim=hd, ffn_dim=ffn, window=window, max_seq_len=ctx,
        query_scale=qs, rope_base={"local": 10_000.0, "global": 1_000_000.0},
        rope_scaling={"global": scaling} if scaling else {}, qk_norm=True,
    )  # fmt: skip


def _griffin(vocab, d, n, h, mlp, *, window=2048, ctx=8192, conv=4) -> ModelConfig:
    return ModelConfig(
        family="recurrentgemma", vocab_size=vocab, d_model=d, layer_kinds=griffin_kinds(n),
        num_heads=h, num_kv_heads=1, head_dim=d // h, ffn_dim=mlp, window=window, max_seq_len=ctx,
        query_scale=float(d // h), rope_base={"local": 10_000.0}, rotary_fraction=0.5,
        final_softcap=30.0, post_norms=False, embed_scale_bf16=True, mlp_bias=True,
        attn_out_bias=True, lru_width=d, conv_width=conv,
    )  # fmt: skip


def _embedding(vocab, d, n, h, kv, hd, ffn, window, ctx, dense) -> ModelConfig:
    return ModelConfig(
        family="embeddinggemma", vocab_size=vocab, d_model=d, layer_kinds=gemma3_kinds(n),
        num_heads=h, num_kv_heads=kv, head_dim=hd, ffn_dim=ffn, window=window, max_seq_len=ctx,
        query_scale=float(hd), rope_base={"local": 10_000.0, "global": 1_000_000.0}, qk_norm=True,
        causal=False, dense_dims=dense,
        matryoshka_dims=matryoshka_dims(dense[-1]),
    )  # fmt: skip


PRESETS: dict[str, ModelConfig] = {
    # Gemma 2 (G2P Tables 1-2). HF checkpoints trim the vocabulary to 256000 rows.
    "gemma2-2b": _gemma2(256_000, 2304, 26, 8, 4, 256, 9216, 256.0),
    "gemma2-9b": _gemma2(256_000, 3584, 42, 16, 8, 256, 14336, 256.0),
    "gemma2-27b": _gemma2(256_000, 4608, 46, 32, 16, 128, 36864, 144.0),
    # Gemma 3 text (G3P Table 1; the 1B window is 512 in code, see REFERENCE §1a).
    "gemma3-270m": _gemma3(262_144, 640, 18, 4, 1, 256, 2048, 256.0, 512, 32_768),
    "gemma3-1b": _gemma3(262_144, 1152, 26, 4, 1, 256, 6912, 256.0, 512, 32_768),
    "gemma3-4b": _gemma3(262_144, 2560, 34, 8, 4, 256, 10240, 256.0, 1024, 131_072, scaling=8.0),
    "gemma3-12b": _gemma3(262_144, 3840, 48, 16, 8, 256, 15360, 256.0, 1024, 131_072, scaling=8.0),
    "gemma3-27b": _gemma3(262_144, 5376, 62, 32, 16, 128, 21504, 168.0, 1024, 131_072, scaling=8.0),
    # RecurrentGemma (REFERENCE §2a).
    "recurrentgemma-2b": _griffin(256_000, 2560, 26, 10, 7680),
    "recurrentgemma-9b": _griffin(256_000, 4096, 38, 16, 12288),
    # EmbeddingGemma (REFERENCE §1a, §3).
    "embeddinggemma-300m": _embedding(262_144, 768, 24, 3, 1, 256, 1152, 512, 2048, (3072, 768)),
    # Tiny presets for tests: every mechanism of the family, small enough to run in milliseconds.
    "tiny-gemma2": _gemma2(512, 64, 4, 4, 2, 16, 128, 16.0, window=8, ctx=256).replace(
        attn_softcap=3.0, final_softcap=5.0),
    "tiny-gemma3": _gemma3(512, 64, 6, 4, 2, 16, 128, 16.0, 8, 256, scaling=8.0, pattern=3),
    "tiny-recurrentgemma": _griffin(512, 96, 6, 4, 288, window=8, ctx=256).replace(final_softcap=5.0),
    "tiny-embeddinggemma": _embedding(512, 64, 6, 4, 2, 16, 128, 8, 256, (128, 64)).replace(
        layer_kinds=gemma3_kinds(6, 3), matryoshka_dims=(64, 32, 16)),
}  # fmt: skip


def get_preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}") from None
