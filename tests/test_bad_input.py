"""Bad input, in every stage, is one line and a non-zero exit, found before any training:
no traceback, no hang, nothing half-written. A run that diverges stops with one line."""

import pytest

from conftest import assert_one_line_error, run_script

# a short run of each stage, and a learning rate that makes it diverge
SHORT = {
    "02_bigram": ["--steps", "30", "--samples", "2", "--no-plots"],
    "03_mlp": ["--steps", "50", "--samples", "2", "--no-plots"],
    "04_batchnorm": ["--steps", "50", "--samples", "2", "--no-plots"],
    "05_backprop_ninja": ["--exercise", "4", "--steps", "50", "--samples", "2",
                          "--no-plots"],
    "06_wavenet": ["--steps", "50", "--samples", "2", "--no-plots"],
    "07_gpt": ["--steps", "30", "--n-layer", "1", "--n-embd", "16", "--block-size", "8",
               "--eval-interval", "100", "--eval-iters", "2", "--max-new-tokens", "5",
               "--no-plots"],
    "08_lstm_gru": ["--steps", "30", "--eval-interval", "100", "--samples", "2",
                    "--no-plots"],
}
DIVERGE = {
    "02_bigram": ["--lr", "1e6"],
    "03_mlp": ["--lr", "1e6"],
    "04_batchnorm": ["--lr", "1e6", "--init", "original", "--no-batchnorm"],
    "05_backprop_ninja": ["--lr", "1e6"],
    "06_wavenet": ["--lr", "1e6"],
    "07_gpt": ["--lr", "10", "--warmup-steps", "0", "--grad-clip", "0"],
    "08_lstm_gru": ["--lr", "10", "--grad-clip", "0"],
}


@pytest.mark.parametrize("stage", sorted(DIVERGE))
def test_a_diverging_run_stops_with_one_line(stage, tmp_out):
    r = run_script(f"{stage}/train.py", *SHORT[stage], *DIVERGE[stage], "--out", tmp_out,
                   timeout=120)
    line = assert_one_line_error(r)
    assert "diverged" in line and "Warning" not in r.stderr


@pytest.mark.parametrize("stage", sorted(SHORT))
@pytest.mark.parametrize("args", [["--out", ""], ["--lr", "inf"], ["--lr", "nan"],
                                  ["--seed", "-1"], ["--steps", "1e3"]])
def test_bad_flags_are_refused_up_front(stage, args, tmp_out):
    r = run_script(f"{stage}/train.py", *SHORT[stage], *args)
    assert_one_line_error(r)


@pytest.mark.parametrize("stage", sorted(SHORT))
def test_an_unwritable_output_folder_is_refused_before_training(stage, tmp_path):
    (tmp_path / "file").write_text("x")
    r = run_script(f"{stage}/train.py", *SHORT[stage], "--out", str(tmp_path / "file" / "o"))
    assert "cannot write into output folder" in assert_one_line_error(r)
    assert "ms/step" not in r.stdout
