"""Regenerate the figures the lesson notes show inline, `0N_*/figures/*.png`.

Each stage runs with its README's full-length command, in a fresh process, writing into a
scratch folder; the key figures are then copied into the stage's `figures/` folder, scaled
to at most 1,000 pixels wide so the whole set stays small. Run from anywhere:

    python tests/make_figures.py              # every stage (full-length runs: tens of minutes)
    python tests/make_figures.py 02 07        # only these stages

The full-size PNG, SVG and PDF versions come from the stages themselves (`--format`).
"""

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import blas_settings  # noqa: F401  (the stages it starts inherit the BLAS settings)

ROOT = Path(__file__).resolve().parent.parent
MAX_WIDTH = 1000  # pixels: sharp in a README, small in the repository

# stage -> the runs that make its key figures: (flags, [figures to keep])
RUNS = {
    "01_micrograd": [([], ["moons", "curves", "graph"])],
    "02_bigram": [([], ["counts", "loss"])],
    "03_mlp": [([], ["lr_finder", "loss", "embedding"])],
    # the lecture's saturated picture: stage 03's initialization, before any fix
    "04_batchnorm": [(["--init", "original", "--no-batchnorm", "--steps", "0"],
                      ["init_saturation"]),
                     (["--deep"], ["deep_activations", "deep_update_ratios"])],
    "05_backprop_ninja": [([], ["dlogits", "loss"])],
    "06_wavenet": [([], ["loss"])],
    "07_gpt": [([], ["loss", "attention"])],
    # --fused: the same numbers as the op-by-op default, three times sooner
    "08_lstm_gru": [(["--compare", "--fused"], ["compare", "gates",
                                                "gradient_through_time"])],
    "09_convnet": [([], ["curves", "confusion", "confused"]),
                   (["--task", "lecun1989"], ["lecun1989"]), (["--task", "tricks"], ["tricks"])],
    # --cnn '': the CNN trained here (2 epochs), whether or not stage 09's checkpoint exists
    "10_interpretability": [(["--cnn", ""], ["templates", "attributions", "ig_convergence",
                                             "maximization", "sanity_maps", "sanity"])],
}


def shrink(src, dst):
    """Copy a PNG, scaled down to MAX_WIDTH pixels wide if it is wider, in 256 colours
    (a plot has few; a third of the bytes)."""
    from PIL import Image  # comes with matplotlib
    with Image.open(src) as im:
        im = im.convert("RGB")
        if im.width > MAX_WIDTH:
            im = im.resize((MAX_WIDTH, round(im.height * MAX_WIDTH / im.width)),
                           Image.LANCZOS)
        im = im.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        im.save(dst, optimize=True)


def make(stage):
    figures = ROOT / stage / "figures"
    figures.mkdir(exist_ok=True)
    for flags, names in RUNS[stage]:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, str(ROOT / stage / "train.py"), *flags, "--out", tmp]
            print("$", " ".join(cmd[1:]), flush=True)
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            for name in names:
                shrink(Path(tmp) / f"{name}.png", figures / f"{name}.png")
                print(f"  {stage}/figures/{name}.png "
                      f"({(figures / f'{name}.png').stat().st_size // 1024} KiB)")


def main(argv):
    stages = [s for s in RUNS if not argv or any(s.startswith(a) for a in argv)]
    if not stages:
        sys.exit(f"no stage matches {' '.join(argv)}: choose from {', '.join(RUNS)}")
    for stage in stages:
        make(stage)
    total = sum(f.stat().st_size for f in ROOT.glob("[0-9][0-9]_*/figures/*.png"))
    print(f"all committed figures: {total / 2**20:.2f} MiB")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except subprocess.CalledProcessError as e:
        sys.exit(f"a stage failed (exit {e.returncode}): {' '.join(map(str, e.cmd))}")
    except KeyboardInterrupt:
        sys.exit("interrupted")
