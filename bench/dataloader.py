"""Patches per second that one loader worker delivers, from the store vs from PNG files.

    python bench/dataloader.py                      # 384 px, the original patch size
    python bench/dataloader.py --size 64 --patients 2 --json out.json   # CI-sized

One worker (the main process, one thread) reads training batches of a synthetic store:
memory-mapped uint8 without augmentation, the same with the `basic` augmentation, and the
alternative this store replaces, decoding each patch and mask from PNG files. Throughput of
a loader with W workers is about W times the per-worker figure while cores last.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from mtl import PatchDataset, SynthSpec, build_augmentation, build_synthetic_store, make_loader


class PngDataset(torch.utils.data.Dataset):
    """The per-file baseline: decode image and mask PNGs for every sample."""

    def __init__(self, folder: Path, count: int, patterns, intensities):
        self.folder, self.count = folder, count
        self.patterns, self.intensities = patterns, intensities

    def __len__(self) -> int:
        return self.count

    def __getitems__(self, request) -> dict[str, torch.Tensor]:
        items = np.asarray(request.items)
        images = np.stack(
            [cv2.imread(str(self.folder / f"{i}.png"), cv2.IMREAD_GRAYSCALE) for i in items]
        )
        masks = np.stack(
            [cv2.imread(str(self.folder / f"{i}_mask.png"), cv2.IMREAD_GRAYSCALE) for i in items]
        )
        return {
            "image": torch.from_numpy(images).unsqueeze(1),
            "mask": torch.from_numpy(masks).unsqueeze(1),
            "pattern": self.patterns[items],
            "intensity": self.intensities[items],
        }


def patches_per_second(dataset, batch_size: int, epochs: int) -> float:
    loader = make_loader(dataset, batch_size, shuffle=True, seed=0)
    count, start = 0, time.perf_counter()
    for epoch in range(1, epochs + 1):
        loader.batch_sampler.set_epoch(epoch)
        for batch in loader:
            count += len(batch["pattern"])
    return count / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=384, help="patch side in pixels")
    parser.add_argument(
        "--patients", type=int, default=8, help="synthetic patients (15 patches each)"
    )
    parser.add_argument("--epochs", type=int, default=3, help="passes over the data per variant")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cv2.setNumThreads(0)

    with tempfile.TemporaryDirectory() as tmp:
        spec = SynthSpec(patients=args.patients, size=args.size, specimens=1, seed=0)
        store = build_synthetic_store(Path(tmp) / "store", spec)
        png = Path(tmp) / "png"
        png.mkdir()
        for i in range(len(store)):
            image, mask = store[i]
            cv2.imwrite(str(png / f"{i}.png"), image)
            cv2.imwrite(str(png / f"{i}_mask.png"), mask * 255)
        rows = np.arange(len(store))
        plain = PatchDataset(store, rows)
        variants = {
            "store": plain,
            "store + basic augmentation": PatchDataset(store, rows, build_augmentation("basic")),
            "PNG decoding": PngDataset(png, len(store), plain.patterns, plain.intensities),
        }
        speed = {
            name: patches_per_second(ds, args.batch, args.epochs) for name, ds in variants.items()
        }

    results = {
        "size": args.size,
        "patches": len(rows),
        "batch": args.batch,
        "patches_per_second_per_worker": speed,
        "ratio_to_png": {name: s / speed["PNG decoding"] for name, s in speed.items()},
    }
    table = Table(title=f"loader throughput per worker, {args.size} px, batch {args.batch}")
    table.add_column("source")
    table.add_column("patches/s", justify="right")
    table.add_column("vs PNG decoding", justify="right")
    for name, s in speed.items():
        table.add_row(name, f"{s:,.0f}", f"{results['ratio_to_png'][name]:.1f}x")
    Console().print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
