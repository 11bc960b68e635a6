"""Each stage copies the previous one forward: its Engine cells hold the previous stage's
Engine cells line for line and in order (the engine only grows), and every stage reads
in the same cell order, the lecture's code first."""

import difflib
import re

import pytest

from conftest import ROOT

STAGES = sorted(p.parent.name for p in ROOT.glob("[0-9][0-9]_*/train.py"))
CELL_ORDER = ["Imports", "Config", "Data", "Model", "Training", "Sampling", "Figures",
              "Main", "Engine"]


def cells(folder):
    """[(title, lines)] of a stage file, split at its `# %%` markers."""
    out = [("preamble", [])]
    for line in (ROOT / folder / "train.py").read_text(encoding="utf-8").splitlines():
        m = re.match(r"# %%\s*(.*)", line)
        if m:
            out.append((m.group(1).strip(), []))
        out[-1][1].append(line)
    return out


def engine_lines(folder):
    return [line for title, lines in cells(folder) if title.startswith("Engine")
            for line in lines]


def removed_lines(a, b):
    """Lines of `a` that a diff from a to b deletes."""
    diff = difflib.unified_diff(a, b, n=0, lineterm="")
    return [d[1:] for d in diff if d.startswith("-") and not d.startswith("---")]


PAIRS = [(a, b) for a, b in zip(STAGES, STAGES[1:]) if a >= "02"]


def test_there_are_pairs_to_check():
    assert len(PAIRS) >= 6, STAGES


@pytest.mark.parametrize("prev,stage", PAIRS)
def test_engine_only_grows(prev, stage):
    """The previous engine, line for line and in order, inside this one: nothing of it
    removed or changed, only additions."""
    before, after = engine_lines(prev), engine_lines(stage)
    assert before, f"{prev} has no Engine cells"
    assert removed_lines(before, after) == [], f"{stage} changes {prev}'s engine"


@pytest.mark.parametrize("stage", [s for s in STAGES if s >= "02"])
def test_cells_in_the_lecture_order(stage):
    """Docstring, Imports, Config, Data, Model, Training, Sampling, Figures, Main, then
    the Engine at the back; the Model cell within the first 300 lines; the `__main__`
    guard last; the stage's new engine ops in a cell titled for the stage."""
    titles = [t for t, _ in cells(stage)[1:]]
    main_kinds = [t.split(":")[0] for t in titles]
    order = [k for i, k in enumerate(main_kinds) if i == 0 or k != main_kinds[i - 1]]
    assert order == CELL_ORDER, order
    lines = (ROOT / stage / "train.py").read_text(encoding="utf-8").splitlines()
    first_model = next(i for i, line in enumerate(lines) if line.startswith("# %% Model"))
    assert first_model < 300, f"the Model cell starts at line {first_model + 1}"
    assert lines[-2:] == ['if __name__ == "__main__":', "    cli.run(main)"], lines[-2:]
    if stage[:2] > "02":
        assert f"Engine: new in stage {stage[:2]}" in " ".join(titles)
