"""Every stage writes its figures as PNG (the default), SVG or PDF (`--format`), for
slides: a short run of each stage in each vector format, every figure checked to be a
whole file of that format."""

from pathlib import Path

import pytest

from conftest import load_stage

# a short run of each stage that writes all its figures
SHORT = {
    "01_micrograd": ["--steps", "2"],
    "02_bigram": ["--steps", "2", "--samples", "1"],
    "03_mlp": ["--steps", "20", "--samples", "1"],
    "04_batchnorm": ["--steps", "20", "--samples", "1"],
    "04_batchnorm --deep": ["--deep", "--steps", "20", "--samples", "1"],
    "05_backprop_ninja": ["--steps", "20", "--samples", "1"],
    "06_wavenet": ["--steps", "20", "--samples", "1"],
    "07_gpt": ["--steps", "2", "--n-layer", "1", "--n-embd", "16", "--block-size", "8",
               "--eval-interval", "1", "--eval-iters", "1", "--max-new-tokens", "5"],
    "08_lstm_gru": ["--steps", "2", "--eval-interval", "1", "--samples", "1"],
}
HEADERS = {"png": b"\x89PNG\r\n\x1a\n", "pdf": b"%PDF-"}


def is_whole(path, fmt):
    data = Path(path).read_bytes()
    if fmt == "svg":
        return b"<svg" in data[:2000] and data.rstrip().endswith(b"</svg>")
    return data.startswith(HEADERS[fmt]) and (fmt != "pdf" or b"%%EOF" in data[-64:])


@pytest.mark.parametrize("fmt", ["svg", "pdf"])
@pytest.mark.parametrize("run", sorted(SHORT))
def test_every_figure_in_every_format(run, fmt, tmp_path):
    stage = load_stage(run.split()[0])
    result = stage.main(SHORT[run] + ["--format", fmt, "--out", str(tmp_path)])
    figures = [f for f in map(str, result["files"]) if f.endswith(f".{fmt}")]
    assert figures, result["files"]
    assert not [f for f in map(str, result["files"]) if f.endswith(".png")]
    for f in figures:
        assert is_whole(f, fmt), f
