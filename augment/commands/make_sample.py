"""`augment make-sample DIR`: write the bundled sample world (Karpathy layout) into DIR."""
from __future__ import annotations

import argparse

from augment.arguments import finite_number, non_negative_int
from augment.world.writer import TEST_FRAC, VAL_FRAC, split_sizes, write_sample


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "make-sample", allow_abbrev=False,
        help="write the procedural captioned-scenes sample dataset",
        description="Write DIR/dataset_sample.json and DIR/images/*.png: 64x64 scenes of 1-3 "
        "shapes with true captions. The same --images and --seed always give identical files.",
    )
    parser.add_argument("dir", metavar="DIR", help="output folder (must be missing or empty)")
    # --images / --captions-per-image first: generate's --n means augmentations per item; the old spellings stay
    parser.add_argument("--images", "--n", dest="n", type=int, default=4000, metavar="N", help="number of images (default 4000)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="world seed (default 0)")
    parser.add_argument("--val-frac", type=finite_number, default=VAL_FRAC, help=f"share of images in val (default {VAL_FRAC})")
    parser.add_argument("--test-frac", type=finite_number, default=TEST_FRAC, help=f"share of images in test (default {TEST_FRAC})")
    parser.add_argument("--captions-per-image", "--captions", dest="captions", type=int, default=None, metavar="N",
                        help="captions per image (default 5; not with --expressions)")
    parser.add_argument("--expressions", type=non_negative_int, default=0, metavar="N",
                        help="grounding: captions are referring expressions, N per object, with true boxes (default: off)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty DIR")
    # SIGTERM (kill, timeout, docker stop) cleans up as Ctrl-C does; a later run removes what SIGKILL leaves
    parser.set_defaults(func=run, sigterm_interrupts=True,
                        interrupted="nothing was written (the unfinished copy is removed); re-run the same command to write the sample")


def run(args: argparse.Namespace) -> int:
    import json

    from augment.errors import SourceError

    if args.expressions and args.captions is not None:  # it would be silently ignored
        raise SourceError("--captions-per-image is not read with --expressions (each object's captions are its expressions): leave one out")
    n_captions = 5 if args.captions is None else args.captions
    out_dir = write_sample(
        args.dir,
        n=args.n,
        seed=args.seed,
        val_frac=args.val_frac,
        test_frac=args.test_frac,
        n_captions=n_captions,
        overwrite=args.overwrite,
        expressions=args.expressions,
    )
    sizes = split_sizes(args.n, args.val_frac, args.test_frac)
    if args.expressions:
        # up to N per object: a scene offers only so many distinct wordings that single an object out
        records = json.loads((out_dir / "dataset_sample.json").read_text(encoding="utf-8"))["images"]
        counts = [len(obj["expressions"]) for record in records for obj in record["objects"]]
        total = sum(counts)
        captions = (f"up to {args.expressions} referring expressions per object as captions "
                    f"({total} for {len(counts)} objects, {total / max(len(counts), 1):.1f} per object)")
    else:
        captions = f"{n_captions} captions each"
    print(f"wrote {args.n} images with {captions} to {out_dir / 'dataset_sample.json'}")
    print(f"splits: train {sizes['train']}, val {sizes['val']}, test {sizes['test']}")
    return 0
