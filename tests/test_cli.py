"""common/cli.py: the command line every stage shares, progress lines, safe outputs."""

from dataclasses import dataclass

import numpy as np
import pytest

from common import cli


@dataclass
class Config:
    steps: int = cli.arg(10, "training steps")
    lr: float = cli.arg(0.1, "learning rate")
    model: str = cli.arg("mlp", "which model", choices=["mlp", "bigram"])
    plots: bool = cli.arg(True, "write figures")
    deep: bool = cli.arg(False, "use the deep network")

    def check(self):
        cli.check(self.steps >= 0, f"--steps must be >= 0, got {self.steps}")


def test_flags_come_from_the_dataclass():
    cfg = cli.parse_config(Config, ["--steps", "5", "--lr", "0.5", "--no-plots", "--deep"])
    assert cfg == Config(steps=5, lr=0.5, model="mlp", plots=False, deep=True)
    assert cli.parse_config(Config, []) == Config()


@pytest.mark.parametrize("argv", [["--steps", "-1"], ["--bogus"], ["--model", "rnn"],
                                  ["--lr", "fast"]])
def test_bad_flags_are_one_line_errors(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.parse_config(Config, argv, prog="train.py")
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("train.py: error:")


def test_run_turns_user_errors_into_one_line(capsys):
    def main():
        raise cli.UserError("no such checkpoint")
    with pytest.raises(SystemExit) as e:
        cli.run(main)
    assert e.value.code == 1
    assert capsys.readouterr().err == "error: no such checkpoint\n"


def test_progress_prints_on_rhythm():
    p = cli.Progress(total=100, every=25, quiet=True)
    for i in range(100):
        p.update(i, loss=1.0 / (i + 1), lr=0.1)
    assert [line.split(":")[0].strip() for line in p.lines] == ["0/100", "25/100", "50/100",
                                                                  "75/100", "99/100"]
    assert "ms/step" in p.lines[0] and "left" in p.lines[0] and "lr 0.1" in p.lines[0]


def test_fmt_duration():
    assert cli.fmt_duration(4.2) == "4.2s"
    assert cli.fmt_duration(62.5) == "1m02s"
    assert cli.fmt_duration(3725) == "1h02m"


def test_checkpoint_round_trip_and_damage(tmp_path):
    path = tmp_path / "model.npz"
    cli.save_checkpoint(path, {"W": np.arange(6.0).reshape(2, 3)}, {"n_embd": 2})
    arrays, config = cli.load_checkpoint(path)
    assert arrays["W"].tolist() == [[0, 1, 2], [3, 4, 5]] and config == {"n_embd": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.npz"]
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(cli.UserError, match="damaged"):
        cli.load_checkpoint(path)
    with pytest.raises(cli.UserError, match="not found"):
        cli.load_checkpoint(tmp_path / "missing.npz")


def test_interrupted_write_leaves_nothing(tmp_path):
    def boom(f):
        f.write(b"half")
        raise RuntimeError("disk full")
    with pytest.raises(RuntimeError):
        cli._atomic_write(tmp_path / "x.png", boom)
    assert list(tmp_path.iterdir()) == []


def test_diverged_loss_is_a_user_error():
    assert cli.finite(1.5) == 1.5
    with pytest.raises(cli.UserError, match="diverged"):
        cli.finite(float("nan"))
