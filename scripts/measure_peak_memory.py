"""Peak memory (VmHWM, the peak resident set) of two large inputs, each measured in a fresh process:

1. `explain` of one 8000x8000 JPEG with a tiny trained run (tests/run_fixtures), next to the same
   process that stops after loading the run (the baseline of Python + torch + the model), and next to
   the full-resolution path explain used before (float image at full size, overlay in one piece);
2. iterating a folder-format dataset of 10,000 small PNGs with a DataLoader: peak RSS after the first
   batch and after the last must be about the same (nothing holds all images).

    python scripts/measure_peak_memory.py [--keep DIR]

Prints one line per measurement, in MB. Needs ~1 GB of disk space in a temporary folder and a few minutes.
The peak is read from /proc/self/status (Linux), not `resource.getrusage(RUSAGE_SELF).ru_maxrss`: Linux
carries the parent's peak into a child across exec, so ru_maxrss of a spawned child reports at least its
parent's peak (here the parent that trained the run and drew the big image).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import sys
import torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
mode, run, image, out = {mode!r}, {run!r}, {image!r}, {out!r}

def peak_mb():
    status = open("/proc/self/status").read()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024

from vfmxai.run_folder import load_run
model, config, _ = load_run(run)
if mode == "explain":
    from vfmxai.explain import explain_files
    explain_files(run, ["ala"], [image], out)
elif mode == "full-resolution":
    import numpy as np
    from vfmxai import explainers
    from vfmxai.data import load_image, resize_image
    from vfmxai.maps import resize_maps
    from vfmxai.viz.overlay import save_overlay
    original = load_image(image)
    batch = resize_image(original, config.backbone.image_size)[None]
    with explainers.get("ala", model) as explainer:
        heat = explainer(batch)[0]
    full = resize_maps(heat[None], tuple(original.shape[-2:]))[0]
    np.save(out + "/full.npy", full.numpy())
    save_overlay(original, full, out + "/full.png")
print(f"{{peak_mb():.0f}}")
"""

DATASET_CHILD = r"""
import torch
torch.set_num_threads(1)
from torch.utils.data import DataLoader
from vfmxai.data import FolderDataset, collate

def peak_mb():
    status = open("/proc/self/status").read()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024

dataset = FolderDataset({root!r}, "train", image_size=32)
after_parse = peak_mb()
first = None
seen = 0
for batch in DataLoader(dataset, batch_size=64, shuffle=True, collate_fn=collate):
    seen += len(batch["id"])
    if first is None:
        first = peak_mb()
print(f"{{len(dataset)}} {{seen}} {{after_parse:.0f}} {{first:.0f}} {{peak_mb():.0f}}")
"""


def _child(code: str) -> str:
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return done.stdout.strip().splitlines()[-1]


def _big_jpeg(path: Path, side: int) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    coarse = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).resize((side, side))
    coarse.save(path, quality=90)


def _folder(root: Path, n: int) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    rows = ["id,label,split"]
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(root / "images" / f"i{i:05d}.png")
        rows.append(f"i{i:05d},{i % 10},train")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    parser.add_argument("--side", type=int, default=8000)
    parser.add_argument("--images", type=int, default=10_000)
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="vfmxai-memory-"))
    work.mkdir(parents=True, exist_ok=True)

    sys.path.insert(0, str(ROOT / "tests"))
    from run_fixtures import tiny_run_config

    from vfmxai.training import train

    run = work / "run"
    if not (run / "model.safetensors").is_file():
        train(tiny_run_config(epochs=1), run, progress=False)
    image = work / "big.jpg"
    if not image.is_file():
        _big_jpeg(image, args.side)
    for mode in ("baseline", "explain", "full-resolution"):
        out = work / f"out-{mode}"
        out.mkdir(exist_ok=True)
        code = CHILD.format(tests=str(ROOT / "tests"), mode=mode, run=str(run), image=str(image), out=str(out))
        print(f"explain {args.side}x{args.side} [{mode}]: peak RSS {_child(code)} MB", flush=True)

    folder = work / "folder"
    if not folder.is_dir():
        _folder(folder, args.images)
    n, seen, parsed, first, last = _child(DATASET_CHILD.format(root=str(folder))).split()
    print(f"FolderDataset of {n} PNGs, {seen} iterated: peak RSS {parsed} MB after parsing, "
          f"{first} MB after the first batch, {last} MB after the last")


if __name__ == "__main__":
    main()
