"""`augment setup-wordnet [--dir DIR]`: make nltk's WordNet available (EDA, synonym attacks)."""
from __future__ import annotations

from augment.wordnet import DEBIAN_WORDNET_DIR, default_data_dir, setup_wordnet


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "setup-wordnet", allow_abbrev=False, help="install WordNet for nltk (download, or build from Debian's wordnet-base)",
        description=(
            "Make nltk's WordNet load: nothing to do if it already does; else nltk.download when "
            "online; else build it from Debian's wordnet-base files (apt-get install wordnet-base)."
        ),
    )
    parser.add_argument("--dir", default=None,
                        help=f"nltk data folder to install into (default {default_data_dir()}, which nltk searches)")
    parser.add_argument("--debian-dir", default=str(DEBIAN_WORDNET_DIR),
                        help="where Debian's wordnet-base keeps WordNet (default %(default)s)")
    parser.add_argument("--no-download", action="store_true", help="do not try nltk.download; build from Debian's files")
    parser.add_argument("--force", action="store_true", help="install again even if WordNet already loads")
    parser.set_defaults(func=run, interrupted="WordNet was not installed; re-run the same command")


def run(args) -> int:
    result = setup_wordnet(args.dir, debian_dir=args.debian_dir, download=not args.no_download, force=args.force)
    print(result.message)
    return 0
