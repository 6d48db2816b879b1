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
