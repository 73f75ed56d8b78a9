"""`augment select POOL --out POOL2 [filters]`: write a sub-pool chosen by method, modality and score.

Alignment filters and --top-k-per-item use the per-row scores `augment score` stored beside the
pool (scores/<scorer-slug>/rows.parquet); an item is (source image, source caption index).
"""
from __future__ import annotations

import argparse

from augment.arguments import finite_number, folder_path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "select", allow_abbrev=False, help="write a sub-pool filtered by method, modality and stored scores",
        description=__doc__.split("\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("pool", metavar="POOL", help="the scored pool to select from")
    parser.add_argument("--out", required=True, type=folder_path, help="folder of the selected pool")
    parser.add_argument("--min-alignment", type=finite_number, default=None, metavar="A", help="keep rows with alignment (cosine) >= A")
    parser.add_argument("--max-alignment", type=finite_number, default=None, metavar="A", help="keep rows with alignment (cosine) <= A")
    parser.add_argument("--top-k-per-item", type=int, default=None, metavar="K", help="keep the K best-aligned rows of each item")
    parser.add_argument("--max-per-item", type=int, default=None, metavar="K", help="keep at most K rows per item (the first in pool order)")
    parser.add_argument("--methods", default=None, help="comma-separated methods to keep (the rows' method column)")
    parser.add_argument("--modality", choices=["text", "image", "pair"], default=None, help="keep rows of one modality")
    parser.add_argument("--scorer", default=None,
                        help="whose stored scores to use: the model name given to `augment score` or its slug (default: the latest)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing pool at --out")
    parser.add_argument("--allow-empty", action="store_true", help="write the pool even when no row passes the filters (default: refuse)")
    # a selection is written whole beside --out and swapped in: an interrupted one leaves nothing to resume,
    # and SIGTERM removes its unfinished copy as Ctrl-C does (a kill left it beside --out)
    parser.set_defaults(func=run, sigterm_interrupts=True,
                        interrupted="nothing was written (a pool already at --out is as it was); re-run the same command")


def run(args) -> int:
    from augment.pool import load_pool
    from augment.select import SelectFilters, select_pool

    filters = SelectFilters(
        min_alignment=args.min_alignment, max_alignment=args.max_alignment, max_per_item=args.max_per_item,
        top_k_per_item=args.top_k_per_item, modality=args.modality,
        methods=[m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else [],
    )
    pool = load_pool(args.pool)
    meta = select_pool(pool, args.out, filters, scorer=args.scorer, overwrite=args.overwrite, allow_empty=args.allow_empty)
    print(f"pool {args.out}: {meta['num_rows']} of {meta['parent_rows']} rows selected from {pool.name}")
    return 0
