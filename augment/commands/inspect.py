"""`augment inspect --source SRC`: validate a source and summarise it; non-zero exit on bad input."""
from __future__ import annotations

import io
import json
from collections import Counter

from augment.commands.common import add_progress_arguments, add_source_arguments, read_source


def register(subparsers) -> None:
    parser = subparsers.add_parser("inspect", allow_abbrev=False, help="validate a source dataset and print a summary")
    add_source_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_progress_arguments(parser, "a progress bar while every image is decoded")
    parser.set_defaults(func=run, interrupted="nothing was written")


def summarise(dataset) -> dict:
    """Counts per split, captions per image, and each image's stored size and mode (the size is
    the decoded size too: EXIF orientation is not applied, see augment.sources)."""
    from PIL import Image

    from augment.sources import undecoded

    raw = undecoded(dataset)
    per_split: dict[str, dict[str, int]] = {}
    per_image = Counter()
    sizes = Counter()
    modes = Counter()
    for row in raw:
        stats = per_split.setdefault(row["split"], {"images": 0, "captions": 0})
        stats["images"] += 1
        stats["captions"] += len(row["captions"])
        per_image[len(row["captions"])] += 1
        image = row["image"]
        handle = io.BytesIO(image["bytes"]) if image.get("bytes") else image["path"]
        with Image.open(handle) as opened:  # header only: size and original mode
            sizes[f"{opened.width}x{opened.height}"] += 1
            modes[opened.mode] += 1
    return {
        "images": len(dataset),
        "captions": sum(s["captions"] for s in per_split.values()),
        "splits": per_split,
        "captions_per_image": dict(sorted(per_image.items())),
        "image_sizes": dict(sizes.most_common(10)),
        "distinct_image_sizes": len(sizes),
        "image_modes": dict(modes),
    }


def run(args) -> int:
    # inspect decodes every image once; it says what it skipped itself (stdout is the summary, JSON with --json)
    dataset, report = read_source(args, validate=True, announce=False)
    summary = summarise(dataset)
    summary["format"] = report.format
    from augment.sources import source_fingerprint

    summary["fingerprint"] = source_fingerprint(dataset)  # what a pool made from it records (its card shows it)
    summary["skipped"] = len(report.skipped)
    if report.report_path is not None:
        summary["skip_report"] = str(report.report_path)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"source {args.source} ({report.format}): {summary['images']} images, {summary['captions']} captions, "
          f"fingerprint {summary['fingerprint']}")
    for split, stats in sorted(summary["splits"].items()):
        print(f"  {split:8s} {stats['images']:7d} images {stats['captions']:8d} captions")
    print("captions per image: " + ", ".join(f"{k}: {v}" for k, v in summary["captions_per_image"].items()))
    print(f"image sizes ({summary['distinct_image_sizes']} distinct, most common): " + ", ".join(f"{k}: {v}" for k, v in summary["image_sizes"].items()))
    print("image modes (converted to RGB on load): " + ", ".join(f"{k}: {v}" for k, v in summary["image_modes"].items()))
    if report.skipped:
        print(f"skipped {len(report.skipped)} bad records; report: {report.report_path}")
    return 0
