import pytest

from gemma_edge.cli import main


def test_inspect_default_preset(capsys):
    assert main(["inspect"]) == 0
    out = capsys.readouterr().out
    assert "gemma3-270m" in out and "100,326,016" in out and "state@32768" in out


def test_inspect_checkpoint_dir(hf_causal, capsys):
    d, _ = hf_causal("tiny-recurrentgemma")
    assert main(["inspect", str(d)]) == 0
    assert "recurrentgemma" in capsys.readouterr().out


def test_errors_are_one_line_without_traceback(tmp_path, capsys):
    assert main(["inspect", "no-such-preset"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gemma-edge: error: unknown preset 'no-such-preset'") and "Traceback" not in err


def test_presets_lists_every_size(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "recurrentgemma-9b" in out and "8,579,977,216" in out


def test_export_verify_bench(tmp_path, capsys):
    import json

    out = tmp_path / "art"
    args = [
        "export",
        "tiny-recurrentgemma",
        "--quant",
        "fp32",
        "--max-seq-len",
        "200",
        "--ops",
        "fused",
        "-o",
        str(out),
    ]
    assert main(args) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["source"] == {"preset": "tiny-recurrentgemma", "seed": 0} and m["parity"]["missed"] == []
    assert "[1/4] quantize" in capsys.readouterr().out
    assert main(["verify", str(out)]) == 0
    assert "parity OK" in capsys.readouterr().out
    assert main(["verify", str(out), "--reference", "tiny-recurrentgemma", "--seed", "1"]) == 1  # other weights
    assert "parity FAILED" in capsys.readouterr().err
    assert main(["bench", str(out), "--profile", "host", "--repeats", "1", "-o", str(tmp_path / "b")]) == 0
    res = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert res["decode_tok_s"]["128"]["median"] > 0 and res["prefill_tok_s"]["128"]["median"] > 0
    assert 0 < res["roofline"]["128"]["fraction"]
    assert (tmp_path / "b" / "bench.png").stat().st_size > 1000 and "decode at context 128" in capsys.readouterr().out
    assert main(["export", "tiny-gemma3", "--quant", "int3", "-o", str(tmp_path / "x")]) == 2
    assert "unknown quantization recipe 'int3'" in capsys.readouterr().err and not (tmp_path / "x").exists()


@pytest.mark.parametrize("backend, quant, ops", [("onnx", "int4", "fused"), ("litert", "int4", "portable")])
def test_export_verify_bench_other_backends(tmp_path, capsys, backend, quant, ops):
    """The same verbs on .onnx and .tflite artifacts."""
    import json

    out = tmp_path / backend
    args = ["export", "tiny-gemma3", "--backend", backend, "--quant", quant, "--ops", ops, "--max-seq-len", "160",
            "-o", str(out)]  # fmt: skip
    assert main(args) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["backend"] == backend and m["recipe"]["name"] == quant and m["parity"]["missed"] == []
    assert main(["verify", str(out)]) == 0 and "parity OK" in capsys.readouterr().out
    assert main(["bench", str(out), "--profile", "host", "--repeats", "1", "-o", str(tmp_path / "b")]) == 0
    res = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert res["backend"] == backend and res["decode_tok_s"]["128"]["median"] > 0


def test_bad_settings_are_one_line_errors(tmp_path, capsys):
    cases = {
        ("inspect", str(tmp_path / "missing-ckpt")): "no such checkpoint directory or GGUF file",
        ("export", "tiny-gemma3", "--max-seq-len", "64", "--prefill-chunk", "0", "-o", str(tmp_path / "a")):
            "prefill_chunk must be in 1..64, got 0",
        ("export", "tiny-gemma3", "--quant", "int4", "--group-size", "0", "-o", str(tmp_path / "a")):
            "int4 weights need a group size > 0",
        # checked before the model is fetched or exported (the demo's export takes minutes)
        ("demo", "tiny-gemma3", "--profile", "pixel-99", "-o", str(tmp_path / "a")):
            "unknown device profile 'pixel-99'",
    }  # fmt: skip
    for argv, msg in cases.items():
        assert main(list(argv)) == 2
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "a").exists()


def test_onnx_short_artifacts_export_verify_and_bench(tmp_path, capsys):
    """max_seq_len below the local window and a prefill chunk of 1 (torch.export refused both)."""
    cases = {"short": ["--max-seq-len", "4"], "chunk1": ["--prefill-chunk", "1", "--max-seq-len", "48"]}
    for name, extra in cases.items():
        out = tmp_path / name
        assert main(["export", "tiny-gemma3", "--backend", "onnx", "-o", str(out), *extra]) == 0
        assert main(["bench", str(out), "--profile", "host", "--repeats", "1", "-o", str(tmp_path / f"b{name}")]) == 0
        assert (tmp_path / f"b{name}" / "bench.png").is_file()
    assert main(["bench", str(tmp_path / "short"), "--repeats", "0"]) == 2
    assert "repeats must be a positive integer" in capsys.readouterr().err
