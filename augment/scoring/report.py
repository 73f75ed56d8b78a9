"""scores.json, the per-pool PNG and the comparison table of several pools.

scores.json::

    {"scores_version": 1, "latest": "<slug>", "scorers": {"<slug>": ENTRY, ...}}

ENTRY (pool_scores.summarise): scorer, pool, source, settings; "alignment" (cosine) per modality
and "all", "clipscore", "source_alignment" (the source's own pairs, a reference), "diversity" per
modality {mean_pairwise_distance, vendi, items}, each {mean, low, high, n}; "gap" per modality
{frechet, mmd2: {value, low, high}, n_pool, n_source, items (the source items the intervals
redraw), gamma}; "encoding" (embeddings computed
vs. taken from the cache); "tables" (side-table paths relative to the pool).
"""
from __future__ import annotations

import os
from pathlib import Path

from augment.atomic import save_figure_atomic
from augment.pool import write_json_atomic
from augment.scoring import store

MODALITY_COLOURS = {"text": "tab:blue", "image": "tab:orange", "pair": "tab:green"}


def update_scores_json(pool_path: str | os.PathLike, entry: dict) -> Path:
    """Add or replace this scorer's entry; other scorers' entries stay. Under the pool's scoring lock:
    a concurrent read-modify-write of another run would drop this entry or its own."""
    with store.scoring_lock(pool_path):
        document = store.read_scores_json(pool_path) or {"scores_version": store.SCORES_VERSION, "scorers": {}}
        slug = entry["scorer"]["slug"]
        document["scorers"][slug] = entry
        document["latest"] = slug
        path = Path(pool_path) / store.SCORES_JSON
        write_json_atomic(path, document)
    return path


# ---------------------------------------------------------------------------------------------
# PNG
# ---------------------------------------------------------------------------------------------


def plot_scores(pool_path: str | os.PathLike, entry: dict) -> Path:
    """POOL/scores.png: alignment histogram, per-item diversity histogram, gap bars (Frechet, MMD^2)."""
    try:
        import matplotlib
    except ModuleNotFoundError:  # a dependency: a partial install; the scores are stored by now
        from augment.errors import MissingDependencyError

        raise MissingDependencyError("scores.png needs matplotlib: pip install matplotlib (the scores are stored; "
                                     "--no-plot leaves the plot out)") from None

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    pool_path = Path(pool_path)
    rows = store.read_entry_table(pool_path, entry, "rows", ["modality", "alignment"]).to_pydict()
    items = store.read_entry_table(pool_path, entry, "items", ["modality", "mean_pairwise_distance"]).to_pydict()
    figure, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    _histograms(axes[0], rows["modality"], rows["alignment"], "alignment (cosine)", "rows")
    reference = (entry.get("source_alignment") or {}).get("mean")
    if reference is not None:
        axes[0].axvline(reference, color="black", linestyle="--", label="source pairs (mean)")
        axes[0].legend(fontsize=8)
    _histograms(axes[1], items["modality"], items["mean_pairwise_distance"], "item diversity (mean pairwise cosine distance)", "items")
    _gap_bars(axes[2], entry["gap"], "frechet", "Frechet distance")
    _gap_bars(axes[3], entry["gap"], "mmd2", "MMD$^2$ (RBF, unbiased)")
    figure.suptitle(f"{entry['pool']['name']} ({entry['pool']['method']}), scorer {scorer_label(entry)}")
    figure.tight_layout()
    path = pool_path / store.SCORES_PLOT
    save_figure_atomic(figure, path, dpi=100)
    plt.close(figure)
    return path


def scorer_label(entry: dict) -> str:
    """The scorer's name, or a folder's last part when the name is a path."""
    name = entry["scorer"]["name"]
    return Path(name.rstrip("/")).name if "/" in name and Path(name).exists() else name


def _histograms(axis, modalities: list, values: list, xlabel: str, ylabel: str) -> None:
    import numpy as np

    present = [v for v in values if v is not None]
    edges = np.histogram_bin_edges(present, bins=30) if present else 30  # shared: bars comparable
    for modality in sorted(set(modalities)):
        chosen = [v for m, v in zip(modalities, values) if m == modality and v is not None]
        axis.hist(chosen, bins=edges, alpha=0.6, label=modality, color=MODALITY_COLOURS.get(modality))
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    if modalities:
        axis.legend(fontsize=8)


def _gap_bars(axis, gap: dict, measure: str, title: str) -> None:
    names = [m for m in gap if gap[m].get(measure)]
    values = [gap[m][measure]["value"] for m in names]
    # a bootstrap interval of a distance need not contain the point estimate (resampling adds
    # spread, so it sits above ~0 for identical samples): clip the whiskers at the bar
    errors = [[max(v - gap[m][measure]["low"], 0.0) for m, v in zip(names, values)],
              [max(gap[m][measure]["high"] - v, 0.0) for m, v in zip(names, values)]]
    axis.bar(names, values, yerr=errors if names else None, capsize=4,
             color=[MODALITY_COLOURS.get(m) for m in names])
    axis.set_title(f"gap to source: {title}", fontsize=10)
    axis.axhline(0, color="black", linewidth=0.5)


# ---------------------------------------------------------------------------------------------
# Comparison table
# ---------------------------------------------------------------------------------------------

TABLE_COLUMNS = (
    "pool", "method", "rows", "alignment", "CLIPScore", "text diversity", "text Vendi",
    "image diversity", "image Vendi", "Frechet text", "MMD² text", "Frechet image", "MMD² image",
)


def _mean_ci(stat: dict | None, digits: int = 3) -> str:
    if not stat:
        return "–"
    return f"{stat['mean']:.{digits}f} [{stat['low']:.{digits}f}, {stat['high']:.{digits}f}]"


def _value_ci(stat: dict | None, digits: int = 3) -> str:
    if not stat:
        return "–"
    return f"{stat['value']:.{digits}f} [{stat['low']:.{digits}f}, {stat['high']:.{digits}f}]"


def table_row(entry: dict) -> list[str]:
    diversity, gap = entry.get("diversity", {}), entry.get("gap", {})
    return [
        entry["pool"]["name"], str(entry["pool"]["method"]), str(entry["pool"]["num_rows"]),
        _mean_ci(entry["alignment"].get("all")), _mean_ci(entry["clipscore"].get("all"), 1),
        _mean_ci(diversity.get("text", {}).get("mean_pairwise_distance")),
        _mean_ci(diversity.get("text", {}).get("vendi"), 2),
        _mean_ci(diversity.get("image", {}).get("mean_pairwise_distance")),
        _mean_ci(diversity.get("image", {}).get("vendi"), 2),
        _value_ci(gap.get("text", {}).get("frechet")), _value_ci(gap.get("text", {}).get("mmd2"), 4),
        _value_ci(gap.get("image", {}).get("frechet")), _value_ci(gap.get("image", {}).get("mmd2"), 4),
    ]


def is_comparison_table(path: Path) -> bool:
    """Whether the file at `path` starts as `comparison_table` writes (so replacing it loses nothing)."""
    header = "| " + " | ".join(TABLE_COLUMNS) + " |"
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read(len(header) + 1).rstrip("\n") == header
    except (OSError, UnicodeDecodeError):
        return False


def comparison_table(entries: list[dict]) -> str:
    """Markdown table, one line per pool; values are means (or point estimates) [CI at the first entry's level]."""
    confidence = entries[0]["settings"]["confidence"] if entries else 0.95
    scorers = sorted({scorer_label(e) for e in entries})
    lines = [
        "| " + " | ".join(TABLE_COLUMNS) + " |",
        "|" + "|".join("---" for _ in TABLE_COLUMNS) + "|",
    ]
    from data_cards.render import markdown_cell  # a pool's folder name may hold "|"; its own cell, not two

    lines += ["| " + " | ".join(markdown_cell(cell) for cell in table_row(e)) + " |" for e in entries]
    note = (f"\nScorer: {', '.join(scorers)}. Brackets: {confidence:.0%} bootstrap CI. Alignment = cosine of "
            "image and caption embeddings; diversity = mean pairwise cosine distance within an item's 1:N set; "
            "gap = Frechet distance and unbiased RBF MMD² between the pool's and the source's embeddings.\n")
    return "\n".join(lines) + "\n" + note
