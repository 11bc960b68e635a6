"""Every stage runs as a notebook: `jupytext --to notebook NN_stage/train.py`, then Run All
in a kernel started in the stage's folder. Here the cells are executed the way a kernel
does: in order, in one fresh namespace with no `__file__`, from the stage's folder, with
a kernel's own words in sys.argv. The last cell (`if __name__ == "__main__": ...`) would
start the stage's full default run; instead `main()` is called with a short run's flags,
and the kernel's argv is shown to be ignored."""

import re
import sys

import pytest

from common import cli
from conftest import ROOT, SHORT_RUNS

# a short run of each stage (the notebook runs the defaults)
SHORT = {stage: args + ["--no-plots"] for stage, args in SHORT_RUNS.items()}
KERNEL_ARGV = ["/usr/lib/python3/site-packages/ipykernel_launcher.py", "-f",
               "/root/.local/share/jupyter/runtime/kernel-1234.json"]


def notebook_cells(folder):
    text = (ROOT / folder / "train.py").read_text(encoding="utf-8")
    return [c for c in re.split(r"^(?=# %%)", text, flags=re.M) if c.strip()]


@pytest.mark.parametrize("folder", sorted(SHORT))
def test_stage_runs_as_a_notebook(folder, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT / folder)
    monkeypatch.setattr(sys, "argv", KERNEL_ARGV)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(ROOT)])
    for name in [m for m in sys.modules if m == "common" or m.startswith("common.")]:
        monkeypatch.delitem(sys.modules, name)  # common/ must be found from the notebook
    ns = {"__name__": "notebook"}  # a kernel's is __main__; this keeps the guard shut
    for cell in notebook_cells(folder):
        exec(compile(cell, f"{folder}/train.py", "exec"), ns)
    assert "__file__" not in ns
    nb_cli = sys.modules["common.cli"]
    assert nb_cli.in_notebook()
    assert nb_cli.parse_config(ns["Config"]) == ns["Config"]()  # the kernel's -f ignored
    result = ns["main"](SHORT[folder] + ["--out", str(tmp_path / "out")])
    assert isinstance(result, dict) and result


def test_a_script_is_not_a_notebook(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["03_mlp/train.py", "-f", "x.json"])
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    assert not cli.in_notebook()
    monkeypatch.setattr(sys, "argv", KERNEL_ARGV)
    assert cli.in_notebook()
