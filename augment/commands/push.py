"""`augment push POOL --repo-id ORG/NAME`: publish a pool (data, data card, provenance) on the Hub.

`--to-dir DIR` writes the same repository to a folder instead (no network, no token): a way to
review the card before publishing, or to publish by other means.
"""
from __future__ import annotations

import re
import sys

from augment.errors import MatPlusError

_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
# the card metadata the Hub checks on each commit: a license id of its list (`data_cards.licenses`)
# and ISO 639 codes of two or three letters (`en`, `fra`), or "code" / "multilingual", in `language`
# (a BCP-47 tag, `en-US`, belongs in `language_details`). A card with `CC BY 4.0` was refused by the
# Hub after the data commit had landed, leaving a repository without its card
_LANGUAGE_CODE = re.compile(r"[a-z]{2,3}|code|multilingual")
# what Ctrl-C prints (augment.cli_common): a re-run over an unfinished export needs no --force
# (hub.write_repo_folder); a Hub repo gets whole commits only, but one holding the data commit
# without the card's (pool.json) is not recognisably this pool's
TO_DIR_INTERRUPTED = "the export is unfinished; re-run the same command to finish it"
HUB_INTERRUPTED = ("only whole commits reach the Hub; re-run the same command to finish the upload "
                   "(with --force if it then says the repository is not a mat-plus pool)")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "push", allow_abbrev=False,
        help="publish a pool on the Hugging Face Hub with its data card",
        description="Upload a pool as a Hub dataset (parquet shards, README.md data card, pool.json, "
        "scores.json), or write that repository to a local folder with --to-dir.",
    )
    parser.add_argument("pool", metavar="POOL", help="the pool folder (or a Hub id of a pool)")
    parser.add_argument("--repo-id", metavar="ORG/NAME", help="the Hub dataset repository to push to (with --to-dir: only named in the card)")
    parser.add_argument("--to-dir", metavar="DIR", help="write the repository to DIR instead of uploading it")
    parser.add_argument("--private", action="store_true", help="create the repository as private (an existing one keeps its visibility)")
    parser.add_argument("--revision", metavar="BRANCH", help="push to this branch (created from main if missing)")
    parser.add_argument("--license", default="unknown", help="the pool's license, a Hub license id (default: unknown)")
    parser.add_argument("--source-license", default="unknown", help="the source dataset's license, shown in the card (default: unknown)")
    parser.add_argument("--language", default="en", help="the captions' language(s), comma-separated ISO 639-1 codes (default: en)")
    parser.add_argument("--source-dataset", metavar="ORG/NAME", default=None,
                        help="the Hub id of the source dataset, for the card's source_datasets (default: the pool's source when it is a Hub id)")
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace what the target holds: another pool, a dataset that is not a pool (on the Hub every file of the "
        "repository or branch but .gitattributes is deleted first: it then holds this pool alone), another pool's export "
        "in --to-dir; or create the dataset beside a model repository of the same name",
    )
    parser.set_defaults(func=run)


def check_arguments(args) -> None:
    if not args.repo_id and not args.to_dir:
        raise MatPlusError("push needs --repo-id ORG/NAME (upload) or --to-dir DIR (write the repository locally)")
    if args.repo_id and not _REPO_ID.fullmatch(args.repo_id):
        raise MatPlusError(f"--repo-id {args.repo_id!r}: expected ORG/NAME (letters, digits, '.', '_', '-')")
    if args.to_dir and (args.private or args.revision):
        raise MatPlusError("--private and --revision apply to uploads only, not to --to-dir")
    from data_cards.licenses import license_problem

    problem = license_problem(args.license)  # --source-license is the card's text only: any words
    if problem:
        raise MatPlusError(f"--license {args.license!r}: {problem}")
    codes = [code.strip() for code in args.language.split(",") if code.strip()]
    wrong = [code for code in codes if not _LANGUAGE_CODE.fullmatch(code)]
    if wrong or not codes:
        tags = [code for code in wrong if re.fullmatch(r"[a-z]{2,3}(?:-[A-Za-z0-9]{2,8})+", code)]
        hint = (f"; {tags[0]!r} is a regional tag: the Hub's language field takes its ISO 639 code, "
                f"{tags[0].split('-')[0]}") if tags else ""
        raise MatPlusError(f"--language {args.language!r}: expected comma-separated ISO 639 codes such as en or en,fr"
                           + (f" ({', '.join(map(repr, wrong))} is not one)" if wrong else "") + hint)


def run(args) -> int:
    args.interrupted = TO_DIR_INTERRUPTED if args.to_dir else HUB_INTERRUPTED
    from augment import hub
    from augment.pool import load_pool
    from data_cards.render import CardOptions

    check_arguments(args)
    if not args.to_dir:  # fail within seconds, before reading a possibly large pool
        hub.require_online()
        hub.require_token()
    pool = load_pool(args.pool)
    options = CardOptions(license=args.license, source_license=args.source_license, repo_id=args.repo_id,
                          language=tuple(code.strip() for code in args.language.split(",") if code.strip()),
                          source_dataset=args.source_dataset)
    if args.to_dir:
        out = hub.write_repo_folder(pool, args.to_dir, options, force=args.force)
        print(f"wrote {out}: {len(pool)} rows in {hub.shard_count(pool)} parquet shard(s), card and provenance")
        return 0
    target = hub.push_pool(pool, args.repo_id, options, private=args.private, revision=args.revision, force=args.force)
    if args.private and target.exists and target.private is False:
        print(f"note: {args.repo_id} already existed and stays public; --private applies to new repositories only",
              file=sys.stderr)
    if args.license == "unknown":
        print("note: the card gives the license as 'unknown'; set one with --license", file=sys.stderr)
    print(f"pushed {len(pool)} rows to {hub.repo_url(args.repo_id, args.revision)}")
    return 0
