"""common/cli.py: the command line every stage shares, progress lines, safe outputs."""

from dataclasses import dataclass

import numpy as np
import pytest

from common import cli


@dataclass
class Config:
    steps: int = cli.arg(10, "training steps", min=0)
    lr: float = cli.arg(0.1, "learning rate", min=1e-12, max=1e3)
    model: str = cli.arg("mlp", "which model", choices=["mlp", "bigram"])
    plots: bool = cli.arg(True, "write figures")
    deep: bool = cli.arg(False, "use the deep network")


def test_flags_come_from_the_dataclass():
    cfg = cli.parse_config(Config, ["--steps", "5", "--lr", "0.5", "--no-plots", "--deep"])
    assert cfg == Config(steps=5, lr=0.5, model="mlp", plots=False, deep=True)
    assert cli.parse_config(Config, []) == Config()


@pytest.mark.parametrize("argv", [["--steps", "-1"], ["--bogus"], ["--model", "rnn"],
                                  ["--lr", "fast"], ["--lr", "inf"], ["--lr", "nan"],
                                  ["--lr", "1e300"], ["--lr", "0"]])
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
    assert cli.load_checkpoint_meta(path) == {"n_embd": 2}
    arrays = cli.load_checkpoint_arrays(path, {"W": np.zeros((2, 3), np.float32)})
    assert arrays["W"].tolist() == [[0, 1, 2], [3, 4, 5]] and arrays["W"].dtype == np.float32
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]  # one file, nothing torn
    with pytest.raises(cli.UserError, match="does not match"):
        cli.load_checkpoint_arrays(path, {"W": np.zeros((3, 2))})
    with pytest.raises(cli.UserError, match="has no 'V': it is another model's"):
        cli.load_checkpoint_arrays(path, {"V": np.zeros(2)})
    with pytest.raises(cli.UserError, match="is a folder, not a checkpoint file"):
        cli.load_checkpoint_meta(tmp_path)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(cli.UserError, match="damaged"):
        cli.load_checkpoint_meta(path)
    with pytest.raises(cli.UserError, match="not found"):
        cli.load_checkpoint_meta(tmp_path / "missing.npz")


@pytest.mark.parametrize("bad", [np.array(["a", "b"]), np.zeros((2, 3), np.complex64),
                                 np.full((2, 3), np.nan)])
def test_checkpoint_arrays_of_the_wrong_kind_are_refused(tmp_path, bad):
    path = tmp_path / "model.npz"
    cli.save_checkpoint(path, {"W": bad}, {})
    with pytest.raises(cli.UserError):
        cli.load_checkpoint_arrays(path, {"W": np.zeros((2, 3), np.float32)})


def test_an_unneeded_huge_array_is_never_read(tmp_path, monkeypatch):
    path = tmp_path / "model.npz"
    cli.save_checkpoint(path, {"W": np.ones(3), "junk": np.zeros(10**6)}, {})
    read = []
    real_load = np.lib.npyio.NpzFile.__getitem__
    monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__",
                        lambda self, k: read.append(k) or real_load(self, k))
    cli.load_checkpoint_arrays(path, {"W": np.zeros(3)})
    assert read == ["W"]


def test_an_oversized_array_is_refused_before_reading(tmp_path):
    path = tmp_path / "model.npz"
    cli.save_checkpoint(path, {"W": np.zeros(10**5)}, {})
    with pytest.raises(cli.UserError, match="larger"):
        cli.load_checkpoint_arrays(path, {"W": np.zeros(10)})


def test_checkpoint_fields_are_checked():
    meta = {"step": 5, "best_val": "x", "history": [], "n": True}
    assert cli.field(meta, "step", int, "ckpt", min=0) == 5
    for key, kind in [("best_val", float), ("history", dict), ("n", int), ("gone", int)]:
        with pytest.raises(cli.UserError, match=f"field '{key}'"):
            cli.field(meta, key, kind, "ckpt")
    with pytest.raises(cli.UserError):
        cli.field({"step": -1}, "step", int, "ckpt", min=0)


def test_saved_configs_are_checked_like_flags():
    assert cli.config_from_dict(Config, {"steps": 3, "lr": 1, "model": "mlp", "plots": True,
                                         "deep": False}, "ckpt").lr == 1.0
    for bad in [{"steps": "3"}, {"steps": None}, {"steps": -3}, {"lr": float("inf")},
                {"model": "rnn"}, {"plots": 1}]:
        values = {**dict(steps=3, lr=0.1, model="mlp", plots=True, deep=False), **bad}
        with pytest.raises(cli.UserError, match="^ckpt: "):
            cli.config_from_dict(Config, values, "ckpt")
    with pytest.raises(cli.UserError, match="does not hold"):
        cli.config_from_dict(Config, {"steps": 3}, "ckpt")


def test_presets_fill_what_was_not_given():
    def presets(given, args):
        return {"lr": 0.5, "steps": 99}
    cfg, given = cli.parse_config(Config, ["--steps", "7"], presets=presets,
                                  with_given=True)
    assert (cfg.steps, cfg.lr, given) == (7, 0.5, {"steps"})
    cfg = cli.parse_config(Config, ["--st", "8"])  # argparse's prefixes still work
    assert cfg.steps == 8


def test_kernel_argv_is_ignored(monkeypatch):
    monkeypatch.setattr("sys.argv", ["/x/ipykernel_launcher.py", "-f", "/k/kernel-1.json"])
    assert cli.parse_config(Config) == Config()


def test_output_folder_is_checked_before_work(tmp_path):
    assert cli.out_dir(str(tmp_path / "a" / "b")).is_dir()
    with pytest.raises(cli.UserError, match="must not be empty"):
        cli.out_dir("")
    (tmp_path / "file").write_text("x")
    with pytest.raises(cli.UserError, match="cannot write"):
        cli.out_dir(str(tmp_path / "file" / "out"))


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


@pytest.mark.parametrize("losses", [[3.0, 2.0, float("nan")], [3.0, 2.5, 31.0],
                                    [3.0, float("inf")]])
def test_progress_stops_a_diverging_run(losses):
    p = cli.Progress(total=10, every=5, quiet=True)
    with pytest.raises(cli.UserError, match="diverged"):
        for i, loss in enumerate(losses):
            p.update(i, loss)


def test_run_stops_quietly_on_a_closed_pipe_and_sigterm():
    import subprocess
    import sys
    code = ("from common import cli\n"
            "def main():\n"
            "    for i in range(100000): print('x' * 50)\n"
            "cli.run(main)\n")
    r = subprocess.run(f"{sys.executable} -c \"{code}\" | head -1", shell=True, cwd=cli.ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.stdout == "x" * 50 + "\n" and r.stderr == ""
    code = ("import os, signal\nfrom common import cli\n"
            "def main():\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n"
            "    import time; time.sleep(5)\n"
            "cli.run(main)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=cli.ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 130 and r.stderr.strip() == "interrupted"
