"""Screenshots of a real report for the README: the top of the page and the maps (not a test).

Writes the report again with the current code from a finished run's stores (``sgm evaluate``
and ``sgm report`` into a temporary folder: the run's own page may come from older code), opens
it in headless Chromium (tests/test_report_browser.py's client; Debian's
``chromium-headless-shell``) and saves two PNG files of at most ``--max-kb`` each: as captured
where they fit, else reduced to a 256-colour palette (and scaled down if need be).

Usage: .venv/bin/python benchmarks/report_screenshots.py [--run results/hadcm3_tas_na/tiny]
       [--out docs] [--n-maps 3] [--max-kb 300]
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def shrink(path: Path, max_kb: int) -> int:
    """Rewrite the PNG ``path`` to at most ``max_kb``: optimised as it is if that fits, else
    with a 256-colour palette, scaled down until it fits; its size in bytes."""
    image = Image.open(path).convert("RGB")
    candidates = [(1.0, False)] + [(0.85 ** i, True) for i in range(8)]
    for scale, palette in candidates:
        sized = image if scale == 1.0 else image.resize(
            (round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
        if palette:
            sized = sized.quantize(256, method=Image.Quantize.FASTOCTREE)
        buf = io.BytesIO()
        sized.save(buf, "PNG", optimize=True)
        if buf.tell() <= 1024 * max_kb:
            break
    path.write_bytes(buf.getvalue())
    return buf.tell()


def sgm(*args: str | Path) -> None:
    cmd = [str(Path(sys.executable).parent / "sgm"), *map(str, args)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=REPO / "results/hadcm3_tas_na/tiny",
                        help="a model's results folder of a finished run (its spec's stores "
                        "are in the folder above)")
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    parser.add_argument("--n-maps", type=int, default=3)
    parser.add_argument("--max-kb", type=int, default=300)
    parser.add_argument("--width", type=int, default=1280, help="browser window width (px)")
    args = parser.parse_args()

    from test_report_browser import find_browser, screenshot_parts

    binary = find_browser()
    if binary is None:
        raise SystemExit("no Chromium: apt-get install chromium-headless-shell")
    run, spec = args.run, args.run.parent
    with tempfile.TemporaryDirectory(prefix="sgm-screens-") as tmp:
        tmp = Path(tmp)
        sgm("evaluate", "--fields", spec / "fields.zarr", "--obs", spec / "obs.zarr",
            "--posterior", run / "posterior.zarr", "--metrics", tmp / "metrics.json",
            "--maps", tmp / "maps.zarr")
        tuning = ["--tuning", run / "tuning.json"] if (run / "tuning.json").is_file() else []
        page = tmp / "report" / "index.html"
        sgm("report", "--fields", spec / "fields.zarr", "--obs", spec / "obs.zarr",
            "--posterior", run / "posterior.zarr", "--metrics", tmp / "metrics.json",
            "--loss", run / "loss.csv", "--out", page, "--n-maps", str(args.n_maps), *tuning)
        first_map = "figure:has(img[alt^='maps_'])"
        args.out.mkdir(parents=True, exist_ok=True)
        shots = {args.out / "report_top.png": None, args.out / "report_maps.png": first_map}
        regions = screenshot_parts(binary, page, shots, width=args.width)
        for path, region in regions.items():
            size = shrink(path, args.max_kb)
            print(f"{path}: {region['width']:.0f}×{region['height']:.0f} px region, "
                  f"{size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
