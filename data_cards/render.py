"""Render a pool's data card (README.md) from its pool.json, and merge it with the Hub's card.

One Jinja template per method family (`<family>.md.j2`, all extending `_base.md.j2`) writes the
card's text; the YAML header is built here as `huggingface_hub.DatasetCardData` so that it is
valid YAML whatever the values hold.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from augment.json_records import is_number
from augment.source_formats import is_hub_id_spelling
from data_cards import catalog

TEMPLATE_DIR = Path(__file__).parent

# The pool is one table, published as one split; shards are named like `push_to_hub` names them.
SPLIT = "train"
DATA_DIR = "data"
DATA_FILES_PATTERN = f"{DATA_DIR}/{SPLIT}-*"

# `push_to_hub` writes these from the uploaded files, so they win over ours when cards merge.
HUB_MANAGED_KEYS = ("dataset_info", "configs")

TAGS = ("mat-plus", "data-augmentation", "adversarial-robustness")

# the Hub's size buckets: (upper bound, label), checked in order
_SIZE_BUCKETS = (
    (10**3, "n<1K"),
    (10**4, "1K<n<10K"),
    (10**5, "10K<n<100K"),
    (10**6, "100K<n<1M"),
    (10**7, "1M<n<10M"),
    (10**8, "10M<n<100M"),
    (10**9, "100M<n<1B"),
    (10**10, "1B<n<10B"),
    (10**11, "10B<n<100B"),
    (10**12, "100B<n<1T"),
)

COLUMN_MEANINGS = {
    "row_id": "unique id: method, source image, source caption index, k-th augmentation",
    "source_image_id": ("id of the source item the row was made from, as mat-plus reads the source: a Karpathy "
                        "JSON's cocoid (else the file name without extension), an ALBEF/SGA JSON's or an image "
                        "folder's image_id (else the image file's name without extension), a CSV/TSV's image path "
                        "without extension; join on it, with split, to the source's images and captions"),
    "source_caption_index": "index of the source caption the row was made from; -1 when none",
    "split": "the source split the item came from",
    "modality": '"text": new caption; "image": new image; "pair": both new',
    "image": "the new image (image and pair rows); empty for text rows",
    "caption": "the new caption (text and pair rows); empty for image rows",
    "method": "the augmentation method",
    "seed": "the seed this row alone was generated with",
    "provenance": "row-level provenance as a JSON object string",
}


@dataclass(frozen=True)
class CardOptions:
    """What the card needs that pool.json does not hold."""

    license: str = "unknown"
    source_license: str = "unknown"
    # where the pool lives on the Hub; the "How to use" snippet shows a placeholder without it
    repo_id: str | None = None
    # the captions' language(s), ISO 639-1 (Flickr30k and COCO captions are English)
    language: tuple[str, ...] = ("en",)
    # the source's Hub dataset id when the pool was made from a local copy of it
    source_dataset: str | None = None


def size_category(num_rows: int) -> str:
    for upper, label in _SIZE_BUCKETS:
        if num_rows < upper:
            return label
    return "n>1T"


def source_is_hub(meta: dict) -> bool | None:
    """Whether the pool's source was a Hub dataset, as `augment generate` recorded its format
    (`source_format`); None for pools written before it did."""
    source_format = meta.get("source_format")
    return None if source_format is None else source_format == "hub"


def source_name(source: str | None, hub: bool | None = None) -> str:
    """How the card names the source: a Hub id as is, a local path by its last part only. `hub`:
    whether it is a Hub id, as recorded (None: guessed from its spelling, for older pools)."""
    if not source:
        return "unknown"
    if _is_hub_id(source, hub):
        return source
    return Path(str(source).rstrip("/")).name or str(source)


def _is_hub_id(source: str, hub: bool | None) -> bool:
    """`hub` as the pool recorded it, else the spelling's guess (`_looks_like_hub_id`)."""
    return hub if hub is not None else _looks_like_hub_id(source)


def _looks_like_hub_id(text: str) -> bool:
    """A guess, for pools that did not record their source's format: a relative path of two parts
    that does not exist here (the card may be rendered elsewhere) reads as a Hub id."""
    return text.count("/") == 1 and is_hub_id_spelling(text) and not Path(text).exists()


def source_datasets(source: str | None, source_dataset: str | None = None, hub: bool | None = None) -> list[str]:
    """The Hub's `source_datasets`: `extended|<id>` for a Hub dataset (the source itself, or
    `source_dataset` naming the Hub copy of a local source), else `extended|<local name>`."""
    if source_dataset:
        return [f"extended|{source_dataset}"]
    if source and _is_hub_id(source, hub):
        return [f"extended|{source}"]
    name = Path(source_name(source, hub=False)).stem if source else ""
    return [f"extended|{name}"] if name and name != "unknown" else ["extended"]


def _is_human_text(method: str) -> bool:
    return method == "i2t-human"


def generator_meta(meta: dict) -> dict:
    """The pool.json of the generator behind `meta`: `meta` itself, or, for a selection (`augment
    select`, of a selection perhaps), its nearest parent that is not one: whose method, model,
    model license and papers a selected pool still carries (a selection of Stable Diffusion
    images keeps SD's use restrictions)."""
    for _ in range(64):  # a chain of selections, never a cycle of them
        parent = meta.get("parent")
        if meta.get("method") != "select" or not isinstance(parent, dict) or not isinstance(parent.get("meta"), dict):
            break
        meta = parent["meta"]
    return meta


def card_metadata(meta: dict, options: CardOptions) -> dict:
    """The card's YAML header (without the Hub-managed `dataset_info`)."""
    generator = generator_meta(meta).get("method", "unknown")
    method = meta.get("method", "unknown")
    modality = meta.get("modality")
    # the pairing of image and caption is the annotation; only i2t-human's pairs are the data's own
    annotations = "found" if _is_human_text(generator) else "machine-generated"
    # text rows carry new text; image rows keep the source's human caption, and so do the control's
    # shuffled pairs (other images' human captions: the pairing is machine-made, the language is not)
    text_is_new = modality in ("text", "pair") and not _is_human_text(generator) and generator != "shuffle"
    return {
        "license": options.license,
        "pretty_name": pretty_name(meta, options),
        "size_categories": [size_category(int(meta.get("num_rows") or 0))],
        "language": list(options.language),
        "source_datasets": source_datasets(meta.get("source"), options.source_dataset, source_is_hub(meta)),
        "task_categories": catalog.task_categories(generator, modality),
        "annotations_creators": [annotations],
        "language_creators": ["machine-generated" if text_is_new else "found"],
        "tags": [*TAGS, *dict.fromkeys([method, generator])],
        "configs": [
            {"config_name": "default", "data_files": [{"split": SPLIT, "path": DATA_FILES_PATTERN}]}
        ],
    }


def pretty_name(meta: dict, options: CardOptions = CardOptions()) -> str:
    return f"mat-plus {meta.get('method', 'unknown')} pool of {card_source(meta, options)[0]}"


def _card_params(meta: dict) -> dict:
    """The parameters the card lists: pool.json's `params`, a selection's scorer by its name and id
    (`params` keeps the id alone, its resume's identity: a digest no reader could look up)."""
    from augment.local_paths import shorten_local_paths

    params = dict(meta.get("params") or {})
    scorer = meta.get("scorer")
    if params.get("scorer") and isinstance(scorer, dict) and isinstance(scorer.get("name"), str):
        params["scorer"] = shorten_local_paths(f"{scorer['name']} (id {params['scorer']})")
    return params


def card_source(meta: dict, options: CardOptions) -> tuple[str, str | None]:
    """How the card names the source: (its name, the local copy's name or None). `--source-dataset`
    names the Hub dataset a source is a copy of: the prose names that, as the YAML header does, and
    what the pool was read from beside it (a reader looks the dataset up by its Hub id)."""
    local = source_name(meta.get("source"), source_is_hub(meta))
    if options.source_dataset and options.source_dataset != local:
        return options.source_dataset, local
    return local, None


def _display(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def markdown_cell(value: Any) -> str:
    """A value made safe for one Markdown table cell (no pipes, no line breaks)."""
    return _display(value).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def score_rows(scores: Any) -> list[dict]:
    """Summarise scores.json for the card.

    The document `augment score` writes (`{"scorers": {slug: ENTRY}, "latest": slug}`, see
    augment/scoring/report.py) gives one row per measure and scorer, latest scorer first. Any
    other document: its top-level numeric entries (a number as is; an object its `mean` or
    `value`, its `ci` or `low`/`high`, and other numbers as details).
    """
    if not isinstance(scores, dict):
        return []
    if isinstance(scores.get("scorers"), dict):
        return _scorer_rows(scores)
    rows = []
    for name, entry in scores.items():
        if is_number(entry):
            rows.append({"name": name, "value": _fmt(entry), "ci": "", "details": ""})
        elif isinstance(entry, dict):
            row = _score_entry_row(name, entry)
            if row:
                rows.append(row)
    return rows


def ci_label(scores: Any) -> str:
    """The Scores table's interval heading: the level the entries were computed at (`augment score
    --confidence`; it said "95% CI" of 80% intervals too); "CI" where the scorers' levels differ."""
    entries = scores.get("scorers") if isinstance(scores, dict) else None
    levels = {(entry.get("settings") or {}).get("confidence") for entry in (entries or {}).values()
              if isinstance(entry, dict) and isinstance(entry.get("settings"), dict)}
    levels.discard(None)
    if len(levels) > 1:
        return "CI (levels differ by scorer: scores.json)"
    level = levels.pop() if levels else 0.95
    return f"{level:.0%} CI" if is_number(level) else "CI"


def _scorer_rows(document: dict) -> list[dict]:
    entries = document["scorers"]
    latest = document.get("latest")
    order = sorted(entries, key=lambda slug: slug != latest)
    rows = []
    for slug in order:
        entry = entries[slug]
        if not isinstance(entry, dict):
            continue
        scorer = (entry.get("scorer") or {}).get("name", slug) if isinstance(entry.get("scorer"), dict) else slug
        measures: list[tuple[str, Any]] = []
        for group in ("alignment", "clipscore"):
            for modality, stats in (entry.get(group) or {}).items():
                measures.append((f"{group} ({modality})", stats))
        measures.append(("source alignment", entry.get("source_alignment")))
        for modality, stats in (entry.get("diversity") or {}).items():
            for name in ("mean_pairwise_distance", "vendi"):
                measures.append((f"{modality} diversity: {name}", (stats or {}).get(name)))
        for modality, gap in (entry.get("gap") or {}).items():
            for name, label in (("frechet", "Frechet distance"), ("mmd2", "MMD²")):
                measures.append((f"{modality} gap: {label}", (gap or {}).get(name)))
        for name, stats in measures:
            row = _score_entry_row(name, stats) if isinstance(stats, dict) else None
            if row:
                row["details"] = ", ".join(part for part in (row["details"], f"scorer: {scorer}") if part)
                rows.append(row)
    return rows


def _score_entry_row(name: str, entry: dict) -> dict | None:
    value_key = next((k for k in ("mean", "value") if is_number(entry.get(k))), None)
    ci = _fmt_ci(entry.get("ci"))
    if not ci and is_number(entry.get("low")) and is_number(entry.get("high")):
        ci = _fmt_ci([entry["low"], entry["high"]])
    details = {k: v for k, v in entry.items() if k not in (value_key, "ci", "low", "high") and is_number(v)}
    if value_key is None and not ci and not details:
        return None
    return {
        "name": name,
        "value": _fmt(entry[value_key]) if value_key else "",
        "ci": ci,
        "details": ", ".join(f"{k}: {_fmt(v)}" for k, v in details.items()),
    }


def _fmt(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _fmt_ci(ci: Any) -> str:
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(is_number(v) for v in ci):
        return f"[{_fmt(ci[0])}, {_fmt(ci[1])}]"
    if is_number(ci):
        return f"± {_fmt(ci)}"
    return ""


def _columns() -> list[dict]:
    from augment.schema import POOL_FEATURES

    return [
        {"name": name, "dtype": _dtype_name(feature), "meaning": COLUMN_MEANINGS.get(name, "")}
        for name, feature in POOL_FEATURES.items()
    ]


def _dtype_name(feature: Any) -> str:
    from datasets import Value

    return feature.dtype if isinstance(feature, Value) else type(feature).__name__.lower()


def template_context(meta: dict, scores: Any, options: CardOptions, card_data: str) -> dict:
    method = meta.get("method", "unknown")
    generator = generator_meta(meta)
    model = meta.get("model") or generator.get("model")  # a selection's: its generator's
    versions = meta.get("package_versions") or {}
    created = str(meta.get("created") or "")
    shown_source, source_copy = card_source(meta, options)
    return {
        "card_data": card_data,
        "pretty_name": pretty_name(meta, options),
        "method": method,
        "family_title": catalog.family_of(method).title,
        "generator_method": generator.get("method", method),
        "modality": meta.get("modality", "unknown"),
        "model": model,
        "model_url": catalog.model_url(model),
        "model_revision": meta.get("model_revision") or generator.get("model_revision"),
        "model_license": catalog.model_license(model),
        "model_has_weights": catalog.has_weights(model),
        "params": sorted(_card_params(meta).items()),
        "seed": meta.get("seed"),
        "n": meta.get("n"),
        "split": meta.get("split"),
        "limit": meta.get("limit"),
        "parent": _parent_name(meta.get("parent")),
        "source_name": shown_source,
        "source_copy": source_copy,
        "source_items": meta.get("source_items"),
        "source_fingerprint": meta.get("source_fingerprint"),
        "source_license": options.source_license,
        "license": options.license,
        "num_rows": meta.get("num_rows", 0),
        "scores": score_rows(scores),
        "ci_label": ci_label(scores),
        "columns": _columns(),
        "repo_id": options.repo_id or "ORG/NAME",
        "schema_version": meta.get("schema_version"),
        "created": created or None,
        "package_versions": ", ".join(f"{name} {version}" for name, version in sorted(versions.items())) or "not recorded",
        "matplus_bibtex": catalog.matplus_bibtex(
            version=versions.get("mat-plus", "unknown"), year=created[:4] or "unknown"
        ),
        "papers": catalog.method_papers(generator.get("method", method), model),
    }


def _parent_name(parent: Any) -> Any:
    """How the card names a selected pool's parent: by its folder's last part, as a local source (never
    the absolute path), with its method; `augment select` records {"path": ..., "meta": its pool.json}."""
    if isinstance(parent, dict):
        meta = parent.get("meta") or {}
        name = meta.get("name") or source_name(parent.get("path"))
        return f"{name} (method `{meta['method']}`)" if meta.get("method") else name
    return source_name(parent) if isinstance(parent, str) else parent


def _environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
        undefined=jinja2.StrictUndefined,  # a typo in a template fails loudly, not silently blank
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,  # Markdown, not HTML
    )
    env.filters["cell"] = markdown_cell
    return env


def render_card_text(meta: dict, scores: Any = None, options: CardOptions = CardOptions()) -> str:
    """The full README.md text: YAML header and the family template's body."""
    from huggingface_hub import DatasetCardData

    card_data = DatasetCardData(**card_metadata(meta, options)).to_yaml()
    family = catalog.family_of(meta.get("method", "unknown"))
    template = _environment().get_template(f"{family.name}.md.j2")
    text = template.render(**template_context(meta, scores, options, card_data))
    return re.sub(r"\n{3,}", "\n\n", text)  # blocks left empty leave blank runs behind


def render_card(meta: dict, scores: Any = None, options: CardOptions = CardOptions()):
    """The pool's card as a `huggingface_hub.DatasetCard`."""
    from huggingface_hub import DatasetCard

    return DatasetCard(render_card_text(meta, scores, options))


def merge_cards(existing, ours):
    """Our card's text and metadata, keeping what the existing card says that we do not.

    `existing` is the card on the Hub after `push_to_hub` (or None): its `dataset_info` and
    `configs` describe the files really uploaded, so they are kept; any other key someone added
    by hand is kept too. Keys we set replace theirs, and the text is ours (it is generated from
    pool.json, so it is refreshed on every push).
    """
    from huggingface_hub import DatasetCard, DatasetCardData

    if existing is None:
        return DatasetCard(str(ours))
    theirs = existing.data.to_dict()
    merged = {**theirs, **ours.data.to_dict()}
    for key in HUB_MANAGED_KEYS:
        if key in theirs:
            merged[key] = theirs[key]
    header = DatasetCardData(**merged).to_yaml()
    return DatasetCard(f"---\n{header}\n---\n{ours.text}")
