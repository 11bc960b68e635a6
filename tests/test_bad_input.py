"""Bad input, in every stage, is one line and a non-zero exit, found before any training:
no traceback, no hang, nothing half-written. A run that diverges stops with one line."""

import pytest

from common import cli
from conftest import SHORT_RUNS, assert_one_line_error, load_stage, run_script

# a learning rate that makes each stage's short run diverge
DIVERGE = {
    "02_bigram": ["--lr", "1e6"],
    "03_mlp": ["--lr", "1e6"],
    "04_batchnorm": ["--lr", "1e6", "--init", "original", "--no-batchnorm"],
    "05_backprop_ninja": ["--lr", "1e6"],
    "06_wavenet": ["--lr", "1e6"],
    "07_gpt": ["--lr", "10", "--warmup-steps", "0", "--grad-clip", "0"],
    "08_lstm_gru": ["--lr", "10", "--grad-clip", "0"],
    "09_convnet": ["--lr", "10", "--optimizer", "sgd", "--weight-decay", "0"],
    "10_interpretability": ["--lr", "10", "--optimizer", "sgd", "--weight-decay", "0"],
}
SHORT = {stage: SHORT_RUNS[stage] + ["--no-plots"] for stage in DIVERGE}


@pytest.mark.parametrize("stage", sorted(DIVERGE))
def test_a_diverging_run_stops_with_one_line(stage, tmp_out):
    r = run_script(f"{stage}/train.py", *SHORT[stage], *DIVERGE[stage], "--out", tmp_out,
                   timeout=120)
    line = assert_one_line_error(r)
    assert "diverged" in line and "Warning" not in r.stderr


@pytest.mark.parametrize("stage", sorted(SHORT_RUNS))
def test_help_lists_every_flag(stage, capsys):
    """`--help` prints every flag with its help text (a "%" in a help text included)."""
    config = load_stage(stage).Config
    with pytest.raises(SystemExit) as e:
        cli.parse_config(config, ["--help"], prog="train.py")
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name in config.__dataclass_fields__:
        assert cli.flag(name)[2:] in out, name


@pytest.mark.parametrize("stage", sorted(SHORT))
@pytest.mark.parametrize("args", [["--lr", "inf"], ["--lr", "nan"], ["--seed", "-1"],
                                  ["--steps", "1e3"]])
def test_bad_flags_are_refused_up_front(stage, args, capsys):
    with pytest.raises(SystemExit) as e:
        cli.parse_config(load_stage(stage).Config, SHORT[stage] + args, prog="train.py")
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("train.py: error:"), err


@pytest.mark.parametrize("stage", sorted(SHORT))
def test_an_empty_output_folder_is_refused(stage):
    assert "must not be empty" in assert_one_line_error(
        run_script(f"{stage}/train.py", *SHORT[stage], "--out", ""))


@pytest.mark.parametrize("stage", sorted(SHORT))
def test_an_unwritable_output_folder_is_refused_before_training(stage, tmp_path):
    (tmp_path / "file").write_text("x")
    r = run_script(f"{stage}/train.py", *SHORT[stage], "--out", str(tmp_path / "file" / "o"))
    assert "cannot write into output folder" in assert_one_line_error(r)
    assert "ms/step" not in r.stdout


# flags that would ask for more memory than any machine has, per stage
HUGE = {stage: [["--batch-size", "1000000000"]] for stage in SHORT if stage != "02_bigram"}
for stage in ("03_mlp", "04_batchnorm", "05_backprop_ninja", "06_wavenet"):
    HUGE[stage] += [["--n-embd", "1000000000"], ["--block-size", "1000000000"]]


@pytest.mark.parametrize("stage,args", [(s, a) for s in sorted(HUGE) for a in HUGE[s]])
def test_sizes_that_cannot_fit_are_refused_up_front(stage, args, capsys):
    with pytest.raises(SystemExit):
        cli.parse_config(load_stage(stage).Config, SHORT[stage] + args, prog="train.py")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "must be <=" in err[0], err


def test_ctrl_c_keeps_the_model_trained_so_far(tmp_path, monkeypatch):
    """Stages 03-06 save their model when Ctrl-C stops the training (here: stage 03)."""
    stage = load_stage("03_mlp")
    real, calls = stage.sgd_step, []

    def step_then_ctrl_c(*args):
        calls.append(1)
        if len(calls) == 1000 + 1000 + 20:  # after the two demos' 2,000 steps: training
            raise KeyboardInterrupt
        return real(*args)
    monkeypatch.setattr(stage, "sgd_step", step_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        stage.main(["--steps", "100", "--no-plots", "--out", str(tmp_path)])
    assert (tmp_path / "model.npz").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
