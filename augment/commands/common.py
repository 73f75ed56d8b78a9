"""Options and helpers shared by the commands that read a source."""
from __future__ import annotations

from augment.arguments import file_path
from augment.source_formats import TABLE_KEYS


def add_source_arguments(parser, required: bool = True) -> None:
    parser.add_argument("--source", required=required, help="dataset: Karpathy/ALBEF JSON, CSV, parquet, datasets folder, imagefolder, or Hub id")
    parser.add_argument("--image-root", default=None, help="image folder for JSON/CSV sources (default: the file's folder, then images/ beside it)")
    parser.add_argument("--source-split", default=None, help="split for sources that name none (CSV/TSV, ALBEF files without train/val/test in the name; default: train)")
    parser.add_argument("--skip-bad", action="store_true", help="skip bad records and write a report of them instead of stopping (decodes every image first)")
    parser.add_argument("--skip-report", default=None, type=file_path, help="where --skip-bad writes its report (default: OUT.skipped.json beside --out where the command has one, else ./skipped.json)")
    parser.add_argument("--validate", action="store_true",
                        help="decode every source image before starting (default: each image is checked when it is used)")
    parser.add_argument("--allow-outside-root", action="store_true",
                        help="read image paths that lead outside the image root (../, absolute paths, symlinks pointing out)")
    # open_clip_train's names, as `train METHOD` takes them: the TSV a model trains on can be inspected,
    # pooled, scored and evaluated too
    parser.add_argument("--csv-img-key", default=None, help="CSV/TSV source: column of image paths (default: image)")
    parser.add_argument("--csv-caption-key", default=None, help="CSV/TSV source: column of captions (default: caption)")
    parser.add_argument("--csv-separator", default=None, help="CSV/TSV source: column separator (default: ',' for .csv, tab for .tsv)")


def source_meta(args, source_format: str | None = None) -> dict:
    """The source and how it was read, as given, so `augment score POOL` can read it again by itself
    (a TSV's column options too); and its format ("hub" for a Hub dataset), so a card never
    mistakes a relative path for a Hub id."""
    table = {key: getattr(args, key, None) for key in TABLE_KEYS}
    return {"source": str(args.source), "image_root": args.image_root, "source_split": args.source_split,
            "source_format": source_format,
            # made from the source without its bad records: score reads it so again (else another fingerprint)
            **({"skip_bad": True} if getattr(args, "skip_bad", False) else {}),
            **{key: value for key, value in table.items() if value is not None}}


def add_progress_arguments(parser, what: str = "progress bars") -> None:
    """`--progress` / `--no-progress`, as `train` spells them (one `no_progress` flag underneath)."""
    parser.add_argument("--progress", dest="no_progress", action="store_false", default=False,
                        help=f"{what} (default)")
    parser.add_argument("--no-progress", dest="no_progress", action="store_true", default=False, help=f"no {what}")


def shows_progress(args) -> bool:
    """Whether a command draws progress bars: augment's `--no-progress`, or `train eval`'s `--no-progress`
    (its `--progress` flag set to False)."""
    return not getattr(args, "no_progress", False) and getattr(args, "progress", None) is not False


def read_source(args, validate: bool = False, announce: bool = True):
    """Load `args.source`; with --skip-bad write the report (`report.report_path`) and, with
    `announce`, say where it is on stderr (stdout stays the command's own output: `--json`)."""
    import sys

    from augment.errors import MatPlusError, SourceError
    from augment.source_formats import is_table_file, table_options_problem
    from augment.sources import check_skip_report_target, load_source, skip_report_target

    if getattr(args, "skip_report", None) and not args.skip_bad:  # it would be silently ignored
        raise MatPlusError("--skip-report is read only with --skip-bad: leave it out or add --skip-bad")
    table = {key: getattr(args, key, None) for key in TABLE_KEYS}
    given = [key for key, value in table.items() if value is not None]
    if given and not is_table_file(args.source):
        raise MatPlusError(f"{', '.join('--' + key.replace('_', '-') for key in given)}: read only for a .csv/.tsv source, "
                           f"not {args.source}: leave {'it' if len(given) == 1 else 'them'} out")
    img_key = "image" if table["csv_img_key"] is None else table["csv_img_key"]  # "" is given, and refused
    caption_key = "caption" if table["csv_caption_key"] is None else table["csv_caption_key"]
    problem = table_options_problem(img_key, caption_key, table["csv_separator"])
    if problem:
        raise MatPlusError(problem)
    target = None
    if args.skip_bad:
        target = skip_report_target(getattr(args, "skip_report", None), getattr(args, "out", None))
        if getattr(args, "skip_report", None) is not None:  # named: checked before reading (which decodes
            check_skip_report_target(target, args.source)  # every image); the default only if written

    try:
        dataset, report = load_source(
            args.source, image_root=args.image_root, split=args.source_split, skip_bad=args.skip_bad,
            validate=validate or getattr(args, "validate", False), progress=shows_progress(args),
            allow_outside_root=getattr(args, "allow_outside_root", False),
            csv_img_key=img_key, csv_caption_key=caption_key, csv_separator=table["csv_separator"],
        )
    except SourceError as exc:
        failed = getattr(exc, "report", None)  # every record bad: the report says which and why
        if target is None or failed is None or not failed.skipped:
            raise
        written = failed.write_skipped(target, None)
        raise SourceError(f"{exc}; report: {written}") from None
    if report.skipped:
        report.report_path = report.write_skipped(target, None)
        if announce:
            print(f"skipped {len(report.skipped)} bad records; report: {report.report_path}", file=sys.stderr)
    return dataset, report
