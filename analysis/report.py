"""The study's report: tables with mean and spread over seeds, property plots, JSON of every number.

"Robust R@1" is the mean of TR@1 and IR@1 under the configured headline attack (SGA by
default), by default counting only attacks that keep captions true (the world's truth checker); "clean R@1" the same without attack. Spread is the sample standard deviation over
seeds; MAT+ - MAT is also given paired by seed (`paired_difference`). Rank correlations are Spearman's (scipy), over the pools of the single-pool MAT+ runs,
with exact permutation p-values up to 9 pools (`spearman`).
"""
from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analysis.config import oracle_factor
from augment.atomic import atomic_write_text, save_figure_atomic
from augment.errors import MatPlusError
from augment.json_records import is_number
from augment.pool import write_json_atomic

PROPERTY_LABELS = {
    "alignment": "alignment (mean cosine, image vs caption)",
    "diversity": "diversity (mean Vendi score per item)",
    "gap": "distribution gap (Frechet distance to the source)",
}


# ----------------------------------------------------------------------------- numbers


def r_at_1(eval_report: dict, attack: str, suffix: str = "") -> float | None:
    entry = eval_report["attacks"].get(attack)
    if entry is None or entry.get(f"tr@1{suffix}") is None:
        return None
    return (entry[f"tr@1{suffix}"] + entry[f"ir@1{suffix}"]) / 2


def mean_std(values: list[float | None]) -> tuple[float | None, float | None, int]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None, 0
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), spread, len(values)


def _results_shape_problem(results) -> str | None:
    """What of a results.json `analysis regimes` reads has the wrong shape (None: nothing)."""
    if not isinstance(results, dict) or not isinstance(results.get("config"), dict):
        return "an object with a 'config' object"
    if not isinstance(results["config"].get("name"), str):
        return "config.name must be a name"
    for row in results.get("headline") if isinstance(results.get("headline"), list) else ():
        if not isinstance(row, dict) or not isinstance(row.get("run"), str):
            return "each headline row must be an object naming its run"
        for key in ("clean", "robust", "clean_best", "robust_best"):
            value = row.get(key)
            # a mean needs its spread and n (`fmt` formats both): [mean, null, null] was a TypeError traceback
            if value and not (isinstance(value, list) and len(value) == 3
                              and all(v is None or is_number(v) for v in value)
                              and (value[0] is None or is_number(value[1]) and is_number(value[2]))):
                return f"headline {row['run']}.{key} must be [mean, spread, n], got {value!r}"
    if not isinstance(results.get("verdicts", []), list):
        return "verdicts must be a list"
    for v in results.get("verdicts", []):  # what `verdict_lines` formats (None: a comparison with no numbers)
        if v is not None and not (isinstance(v, dict) and all(isinstance(v.get(k), str) for k in ("run", "baseline", "checkpoint"))
                                  and all(is_number(v.get(k)) for k in ("difference", "spread", "n"))
                                  and isinstance(v.get("beyond_twice_spread"), bool)):
            return ("each verdict must be an object with run, baseline, checkpoint, difference, spread, n and "
                    f"beyond_twice_spread, got {repr(v)[:80]}")
        problem = _paired_problem(v.get("paired")) if v is not None else None
        if problem:
            return f"verdict {v['run']}'s paired entry {problem}, got {repr(v['paired'])[:80]}"
    return None


def _paired_problem(paired) -> str | None:
    """What of a verdict's `paired` entry (`paired_difference`) `paired_words` formats has the wrong shape;
    None: nothing, or no entry (results.json written before it)."""
    if paired is None:
        return None
    if not isinstance(paired, dict) or not is_number(paired.get("n")):
        return "must be an object with a number n"
    if paired["n"] < 2:
        return None  # one seed: nothing of it is printed
    if not all(is_number(paired.get(key)) for key in ("mean", "sd", "higher")):
        return "must hold numbers mean, sd and higher"
    if paired.get("ci95") is not None:
        interval = paired["ci95"]
        if not (isinstance(interval, list) and len(interval) == 2 and all(is_number(x) for x in interval)
                and is_number(paired.get("p"))):
            return "must hold ci95 as [low, high] and a number p"
        if paired.get("p_holm") is not None and not (is_number(paired["p_holm"]) and is_number(paired.get("comparisons"))):
            return "must hold p_holm and comparisons as numbers"
    return None


def fmt(stat: tuple[float | None, float | None, int]) -> str:
    mean, spread, n = stat
    if mean is None:
        return "-"
    return f"{mean:.1f} ± {spread:.1f}" if n > 1 else f"{mean:.1f}"


def pool_properties(scores: dict) -> dict[str, float | None]:
    """Alignment, diversity and gap of a pool from its scores.json (the latest scorer's entry)."""
    entry = scores["scorers"][scores["latest"]] if "scorers" in scores else scores

    def mean_of(stat: Any) -> float | None:
        if isinstance(stat, dict):
            for key in ("mean", "value", "estimate"):
                if isinstance(stat.get(key), (int, float)):
                    return float(stat[key])
        return float(stat) if isinstance(stat, (int, float)) else None

    alignment = mean_of((entry.get("alignment") or {}).get("all"))
    diversities = [mean_of(d.get("vendi")) for d in (entry.get("diversity") or {}).values() if isinstance(d, dict)]
    gaps = [mean_of(g.get("frechet")) for g in (entry.get("gap") or {}).values() if isinstance(g, dict)]
    diversities = [d for d in diversities if d is not None]
    gaps = [g for g in gaps if g is not None]
    return {
        "alignment": alignment,
        "diversity": statistics.fmean(diversities) if diversities else None,
        "gap": statistics.fmean(gaps) if gaps else None,
    }


def pool_content(scores: dict) -> str | None:
    """What a pool's diversity and gap were measured on (the latest scorer's entry): "text", "image"
    or "text+image" (their mean, for a pool that changes both), None when its scores hold neither."""
    entry = scores["scorers"][scores["latest"]] if "scorers" in scores else scores
    kinds = [m for m in ("text", "image") if isinstance((entry.get("diversity") or {}).get(m), dict)
             or isinstance((entry.get("gap") or {}).get(m), dict)]
    return "+".join(kinds) or None


def pool_content_words(contents: dict[str, str | None]) -> list[str]:
    """The pool table's note when pools' diversity and gap come from different embeddings (a rank
    correlation across them mixes two scales); nothing when every pool is measured on the same."""
    kinds = {kind for kind in contents.values() if kind}
    if len(kinds) < 2:
        return []
    groups = "; ".join(f"{kind}: {', '.join(p for p, k in contents.items() if k == kind)}" for kind in sorted(kinds))
    both = ", the mean of the two for text+image" if "text+image" in kinds else ""
    return ["", f"Diversity and gap are measured on what each pool changes, in that content's embedding ({groups}{both}), "
            "so across these pools they are not on one scale, and the rank correlations "
            "below mix them. Vendi is an effective number of distinct members of an item's set (its originals and pool "
            "rows): a pool with more rows per item can score higher."]


def summarise_runs(results: list[dict], attacks: list[str], headline: str, meaning_preserved: bool = False) -> dict[str, dict]:
    """Per run name: mean/std over seeds of clean and attacked R@1 (TR, IR and their mean)."""
    by_run: dict[str, list[dict]] = defaultdict(list)
    for result in results:
        by_run[result["run"]].append(result)
    summary = {}
    for run, entries in by_run.items():
        row: dict[str, Any] = {"method": entries[0]["method"], "pools": entries[0]["pools"], "seeds": [e["seed"] for e in entries]}
        for attack in attacks:
            reports = [e["eval"] for e in entries]
            row[attack] = {
                "tr@1": mean_std([r["attacks"].get(attack, {}).get("tr@1") for r in reports]),
                "ir@1": mean_std([r["attacks"].get(attack, {}).get("ir@1") for r in reports]),
                "r@1": mean_std([r_at_1(r, attack) for r in reports]),
                "r@1_meaning_preserved": mean_std([r_at_1(r, attack, "_meaning_preserved") for r in reports]),
                "true_pct": mean_std([(r["attacks"].get(attack, {}).get("meaning_preserved") or {}).get("true_pct") for r in reports]),
            }
        robust = row.get(headline, {})
        if meaning_preserved and robust.get("r@1_meaning_preserved", (None,))[0] is not None:
            row["robust"] = robust["r@1_meaning_preserved"]
        else:  # an image-only headline attack has no captions to judge
            row["robust"] = robust.get("r@1", (None, None, 0))
        summary[run] = row
    return summary


# ----------------------------------------------------------------------------- tables


def main_table(summary: dict, attacks: list[str]) -> str:
    attacked = [a for a in attacks if a != "clean"]
    header = ["run", "clean TR@1", "clean IR@1"] + [f"{a} R@1" for a in attacked] + ["**robust R@1**"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run, row in summary.items():
        cells = [run, fmt(row["clean"]["tr@1"]), fmt(row["clean"]["ir@1"])] + [fmt(row[a]["r@1"]) for a in attacked]
        cells.append(fmt(row["robust"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def meaning_table(summary: dict, attacks: list[str]) -> str:
    text_attacks = [a for a in attacks if any(row[a]["true_pct"][0] is not None for row in summary.values())]
    if not text_attacks:
        return "(no text attack was evaluated)"
    header = ["run"] + [f"{a}: R@1 / R@1 meaning-preserved / % attacked captions still true" for a in text_attacks]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run, row in summary.items():
        cells = [run] + [f"{fmt(row[a]['r@1'])} / {fmt(row[a]['r@1_meaning_preserved'])} / {fmt(row[a]['true_pct'])}" for a in text_attacks]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pool_table(properties: dict[str, dict], robust: dict[str, tuple], gains: dict[str, tuple] | None = None) -> str:
    gains = gains or {}
    lines = ["| pool | alignment | diversity (Vendi) | gap (Frechet) | MAT+ robust R@1 | gain: MAT+ - MAT (paired by seed) | n |",
             "|---|---|---|---|---|---|---|"]
    for pool, props in properties.items():
        cells = [pool] + [("-" if props[k] is None else f"{props[k]:.3f}") for k in ("alignment", "diversity", "gap")]
        gain, pool_robust = gains.get(pool, (None, None, 0)), robust.get(pool, (None, None, 0))
        runs = pool_robust[2]
        # the gain pairs seeds with a MAT run: fewer than the pool's runs when a seed has none, then said
        cells += [fmt(pool_robust), "-" if gain[0] is None else f"{gain[0]:+.1f}" + (f" ± {gain[1]:.1f}" if gain[2] > 1 else "")
                  + (f" (n {gain[2]})" if gain[0] is not None and gain[2] != runs else ""), str(runs)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def robust_of(entry: dict, headline: str, meaning_preserved: bool) -> float | None:
    """One result's robust R@1: under `headline`, meaning-preserved where asked and measured."""
    value = r_at_1(entry["eval"], headline, "_meaning_preserved") if meaning_preserved else None
    return value if value is not None else r_at_1(entry["eval"], headline)


def pool_gains(results: list[dict], headline: str, meaning_preserved: bool, baseline: str = "mat") -> dict[str, tuple]:
    """Per pool: mean ± sd over seeds of (MAT+ with the pool - `baseline`) robust R@1, paired by seed."""
    # the baseline of any group: `mat` trained only for `more_samples` is still MAT (as `verdict` reads it)
    base = {r["seed"]: robust_of(r, headline, meaning_preserved) for r in results if r["run"] == baseline}
    gains: dict[str, list] = defaultdict(list)
    for r in results:
        pools = r.get("pools") or []
        if r["method"] == "mat+" and len(pools) == 1 and r["run"] == f"mat+:{pools[0]}" and base.get(r["seed"]) is not None:
            value = robust_of(r, headline, meaning_preserved)
            if value is not None:
                gains[pools[0]].append(value - base[r["seed"]])
    return {pool: mean_std(values) for pool, values in gains.items()}


def correlation_table(correlations: dict[str, dict], gain_correlations: dict[str, dict]) -> str:
    lines = ["| pool property | Spearman rho with MAT+ robust R@1 | p | Spearman rho with the gain over MAT | p | n pools |",
             "|---|---|---|---|---|---|"]
    for prop, c in correlations.items():
        g = gain_correlations.get(prop, {"rho": None, "p": None, "n": 0})
        cell = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        p_cell = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        n = str(c["n"]) if g["n"] in (0, c["n"]) else f"{c['n']} / {g['n']} (gain)"  # the gain's pools may be fewer
        lines.append(f"| {prop} | {cell(c['rho'])} | {p_cell(c['p'])} | {cell(g['rho'])} | {p_cell(g['p'])} | {n} |")
    return "\n".join(lines)


def headline_rows(summary: dict, best_summary: dict, runs: list[str]) -> list[dict]:
    """The comparison that matters: clean and robust R@1 of `runs`, last and best-on-val checkpoints."""
    rows = []
    for run in runs:
        if run not in summary:
            continue
        best = best_summary.get(run)
        rows.append({"run": run, "clean": summary[run]["clean"]["r@1"], "robust": summary[run]["robust"],
                     "clean_best": best["clean"]["r@1"] if best else None, "robust_best": best["robust"] if best else None,
                     "n": summary[run]["robust"][2]})
    return rows


def verdict(summary: dict, run: str, baseline: str = "mat", key: str = "robust") -> dict | None:
    """Difference of mean robust R@1 of `run` and `baseline`, and whether it exceeds twice the larger seed spread."""
    if run not in summary or baseline not in summary:
        return None
    (m1, s1, n1), (m0, s0, n0) = summary[run][key], summary[baseline][key]
    if m1 is None or m0 is None:
        return None
    spread = max(s1 or 0.0, s0 or 0.0)
    return {"run": run, "baseline": baseline, "difference": m1 - m0, "spread": spread, "n": min(n1, n0),
            "beyond_twice_spread": n1 > 1 and n0 > 1 and abs(m1 - m0) > 2 * spread}


def paired_difference(results: list[dict], run: str, headline: str, meaning_preserved: bool,
                      baseline: str = "mat") -> dict | None:
    """`run` - `baseline` robust R@1 paired by seed (None: no seed has both): the per-seed differences,
    their mean and sample sd, how many are above and below 0, and where there are 2 seeds or more
    with some spread, the 95% t interval of the mean difference and the paired t test's two-sided p.

    A MAT+ run and the MAT run of one seed start from the same pretrained weights, go through the
    fine-tuning items in the same order with the same crops and PGD starts (train.data: the plan
    depends on the seed and step only) and are evaluated on the same images with the same attack
    seed: paired runs, for which the difference per seed is the comparison, not two means."""
    from scipy import stats

    def per_seed(name: str) -> dict[int, float]:
        return {r["seed"]: value for r in results
                if r["run"] == name and (value := robust_of(r, headline, meaning_preserved)) is not None}

    ours, base = per_seed(run), per_seed(baseline)
    seeds = sorted(set(ours) & set(base))
    if not seeds:
        return None
    # to 1e-9, as `spearman` reads values: equal differences in float noise (1.0 and 0.9999999999999964) have no spread
    differences = [round(ours[s] - base[s], 9) for s in seeds]
    mean, sd, n = mean_std(differences)
    ci95 = p = None
    if n > 1 and sd > 0:
        half = float(stats.t.ppf(0.975, n - 1)) * sd / n ** 0.5
        ci95 = [mean - half, mean + half]
        p = float(stats.ttest_1samp(differences, 0.0).pvalue)
    return {"seeds": seeds, "differences": differences, "mean": mean, "sd": sd, "n": n,
            "higher": sum(d > 0 for d in differences), "lower": sum(d < 0 for d in differences), "ci95": ci95, "p": p}


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment of p-values tested together (same order as given). Written here: scipy
    has only Benjamini-Hochberg's correction (`false_discovery_control`), and statsmodels would be a new dependency."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def adjust_for_comparisons(verdicts: list[dict]) -> None:
    """Give each paired verdict of a checkpoint kind Holm's p over that kind's comparisons (`p_holm`, and
    `comparisons`: how many), when there are several: a study comparing eight pools with MAT makes eight
    tests, and one p below 0.05 among them is what chance alone often gives. Every comparison of 2 paired
    seeds or more counts, one without a p too (the same difference in every seed: no t test): it enters the
    adjustment as p = 1, claiming nothing, rather than shrinking the family (it was left out until a review)."""
    for checkpoint in dict.fromkeys(v.get("checkpoint") for v in verdicts):
        compared = [v["paired"] for v in verdicts if v.get("checkpoint") == checkpoint
                    and (v.get("paired") or {}).get("n", 0) > 1]
        if len(compared) > 1:
            adjusted = holm([1.0 if c.get("p") is None else c["p"] for c in compared])
            for paired, p_holm in zip(compared, adjusted):
                paired["comparisons"] = len(compared)
                if paired.get("p") is not None:
                    paired["p_holm"] = p_holm


def paired_words(paired: dict | None) -> str:
    """The verdict line's paired clause ('' under 2 paired seeds: nothing to judge a spread by)."""
    if not paired or paired["n"] < 2:
        return ""
    words = (f"; paired by seed: {paired['mean']:+.1f} ± {paired['sd']:.1f}, higher in {paired['higher']} of "
             f"{paired['n']} seeds")
    if paired.get("ci95"):
        low, high = paired["ci95"]
        holm_words = (f"; Holm over the {paired['comparisons']} MAT+ runs: {paired['p_holm']:.3f}"
                      if paired.get("p_holm") is not None else "")
        words += (f", 95% t interval {low:+.1f} to {high:+.1f} (paired t p = {paired['p']:.3f}{holm_words}): "
                  + ("excludes 0" if low > 0 or high < 0 else "includes 0"))
    return words


def starting_model_words(results: list[dict], runs: list[str]) -> list[str]:
    """A verdict-list line naming the runs of `runs` whose best-on-validation checkpoint is step 0,
    the model fine-tuning started from (validation scores it first, and a later step must beat it):
    their best-checkpoint numbers are the pretrained model's, not a fine-tuned one's. Nothing if none."""
    at_start = [f"{r['run']} seed {r['seed']}" for r in results if r["run"] in runs and r.get("best_step") == 0]
    if not at_start:
        return []
    return [f"* best-on-validation checkpoint at step 0, the starting model before any fine-tuning: {', '.join(at_start)} "
            "(no fine-tuned step beat it on validation; the best-checkpoint numbers of these seeds are the pretrained model's)"]


def headline_table(rows: list[dict]) -> str:
    with_best = any(r["robust_best"] is not None for r in rows)
    header = ["model", "clean R@1", "**robust R@1**"] + (["clean R@1 (best val ckpt)", "robust R@1 (best val ckpt)"] if with_best else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["run"], fmt(r["clean"]), fmt(r["robust"])]
        if with_best:
            cells += [fmt(r["clean_best"]) if r["clean_best"] else "-", fmt(r["robust_best"]) if r["robust_best"] else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict_lines(verdicts: list[dict]) -> list[str]:
    lines = []
    for v in verdicts:
        if v is None:
            continue
        if v["n"] < 2:
            lines.append(f"* {v['run']} - {v['baseline']}: {v['difference']:+.1f} points of robust R@1 ({v['checkpoint']} checkpoint), "
                         "one seed: no seed spread to judge it against (run more seeds)")
            continue
        if v["beyond_twice_spread"]:
            word = f"{v['run']} {'better' if v['difference'] > 0 else 'worse'}: beyond"
        else:
            word = "no difference shown: within"  # not "no difference": seeds within the spread show none, not its absence
        lines.append(f"* {v['run']} - {v['baseline']}: {v['difference']:+.1f} points of robust R@1 ({v['checkpoint']} checkpoint), "
                     f"{word} twice the larger seed spread (2 x {v['spread']:.1f}, n = {v['n']} seeds)"
                     + paired_words(v.get("paired")))
    return lines


def curves_by_run(results: list[dict]) -> dict[str, dict[int, list[dict]]]:
    """run -> step -> the validation lines of every seed at that step."""
    curves: dict[str, dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for result in results:
        for line in result.get("curve") or []:
            curves[result["run"]][line["step"]].append(line)
    return curves


def plot_curves(out: Path, results: list[dict], runs: list[str], title: str) -> Path | None:
    """Validation robust (solid) and clean (dotted) R@1 against the step, mean over seeds ± sd."""
    curves = curves_by_run(results)
    runs = [r for r in runs if r in curves]
    if not runs:
        return None
    plt = _plt()
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for index, run in enumerate(runs):
        colour = f"C{index}"
        steps = sorted(curves[run])
        for key, style in (("robust", "-"), ("clean", ":")):
            stats = [mean_std([line[key] for line in curves[run][step]]) for step in steps]
            means = [st[0] for st in stats]
            spreads = [st[1] or 0.0 for st in stats]
            axis.plot(steps, means, style, color=colour, marker="o" if key == "robust" else None, markersize=3,
                      label=f"{run} ({key})")
            if key == "robust":
                axis.fill_between(steps, [m - e for m, e in zip(means, spreads)], [m + e for m, e in zip(means, spreads)],
                                  color=colour, alpha=0.15)
    axis.set_xlabel("fine-tuning step")
    axis.set_ylabel("validation R@1 (%)")
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    path = out / "learning_curves.png"
    save_figure_atomic(figure, path, dpi=110)
    plt.close(figure)
    return path


# ----------------------------------------------------------------------------- plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# up to this many pools the p-value enumerates every pairing (9! = 362,880): scipy's t
# approximation is unreliable at a study's few pools (rho 0.83 over 6: p 0.04 by it, 0.058 exact)
EXACT_SPEARMAN_MAX_N = 9


def spearman(xs: list[float], ys: list[float]) -> dict:
    """{"rho", "p", "n", "p_method"}: Spearman's rho and its two-sided p-value, exact (the share
    of all n! pairings of the ranks with |rho| at least as large) up to EXACT_SPEARMAN_MAX_N
    points, scipy's t approximation above. The enumeration is written here because
    scipy.stats.permutation_test's exact mode took 17 s for 7 points on this machine."""
    import itertools

    import numpy as np
    from scipy.stats import rankdata, spearmanr

    # equal values are ties: a mean of paired gains +3.33 and -3.33 is -2.2e-16 in floats, which was
    # ranked below exact zeros and gave a rank correlation to gains that were all zero
    xs, ys = [round(float(v), 9) for v in xs], [round(float(v), 9) for v in ys]
    if len(xs) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2 or not np.isfinite(np.concatenate(
            [np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)])).all():  # undefined for constant or NaN input
        return {"rho": None, "p": None, "n": len(xs), "p_method": None}
    result = spearmanr(xs, ys)
    rho, p, method = float(result.statistic), float(result.pvalue), "t approximation"
    if len(xs) <= EXACT_SPEARMAN_MAX_N:
        x = rankdata(xs) - (len(xs) + 1) / 2.0
        y = rankdata(ys) - (len(ys) + 1) / 2.0
        pairings = y[np.array(list(itertools.permutations(range(len(ys)))))]  # [n!, n]
        rhos = pairings @ x / np.sqrt((x * x).sum() * (y * y).sum())
        p, method = float(np.mean(np.abs(rhos) >= abs(rho) - 1e-12)), "exact permutation"
    return {"rho": None if rho != rho else rho, "p": None if p != p else p, "n": len(xs), "p_method": method}


def plot_properties(out: Path, properties: dict[str, dict], robust: dict[str, tuple]) -> tuple[Path, dict]:
    plt = _plt()
    figure, axes = plt.subplots(1, 3, figsize=(13, 4))
    correlations = {}
    for axis, prop in zip(axes, ("alignment", "diversity", "gap")):
        pools = [p for p in properties if properties[p][prop] is not None and robust.get(p, (None,))[0] is not None]
        xs = [properties[p][prop] for p in pools]
        ys = [robust[p][0] for p in pools]
        errs = [robust[p][1] or 0 for p in pools]
        axis.errorbar(xs, ys, yerr=errs, fmt="o", capsize=3)
        for x, y, p in zip(xs, ys, pools):
            axis.annotate(p, (x, y), fontsize=8, xytext=(3, 3), textcoords="offset points")
        correlations[prop] = spearman(xs, ys)
        rho = correlations[prop]["rho"]
        axis.set_title(f"Spearman rho = {rho:.2f}" if rho is not None else "too few pools for a correlation")
        axis.set_xlabel(PROPERTY_LABELS[prop])
        axis.set_ylabel("MAT+ robust R@1 (%)")
    figure.tight_layout()
    path = out / "properties_vs_robustness.png"
    save_figure_atomic(figure, path, dpi=110)
    plt.close(figure)
    return path, correlations


def plot_series(out: Path, name: str, labels: list[str], stats: list[tuple], xlabel: str, title: str, bars: bool) -> Path:
    plt = _plt()
    figure, axis = plt.subplots(figsize=(6, 4))
    means = [s[0] if s[0] is not None else 0 for s in stats]
    errs = [s[1] or 0 for s in stats]
    if bars:
        axis.bar(range(len(labels)), means, yerr=errs, capsize=4)
        axis.set_xticks(range(len(labels)), labels, rotation=15, fontsize=8)
    else:
        axis.errorbar(labels, means, yerr=errs, fmt="o-", capsize=4)
    axis.set_xlabel(xlabel)
    axis.set_ylabel("robust R@1 (%)")
    axis.set_title(title)
    figure.tight_layout()
    path = out / name
    save_figure_atomic(figure, path, dpi=110)
    plt.close(figure)
    return path


# ----------------------------------------------------------------------------- the report


def _protocol_words(evaluation: dict) -> str:
    """Under which attack protocol the study's numbers were measured (eval.protocol; README: Protocols)."""
    from train.attacks.settings import canonical_options

    evaluation = canonical_options(evaluation)  # `attack_protocol`, the older spelling, read as `protocol`
    return (f"attack protocol `{evaluation.get('protocol', 'project')}`"
            + (" with the reference code's bugs" if evaluation.get("reference_bugs") else ""))


def write_report(out: Path, config: dict, scores: dict[str, dict], results: list[dict]) -> Path:
    """report.md (the setting, the comparison that matters, the tables, the sweeps), results.json
    (every number) and the plots of a retrieval study, into `out`; returns report.md's path."""
    out = Path(out)
    attacks, headline, meaning_preserved = _headline_choice(config)
    summary = summarise_runs(results, attacks, headline, meaning_preserved)
    main_runs = {run: row for run, row in summary.items()
                 if any(r["run"] == run and r["group"] == "main" for r in results) or run == "pretrained"}
    pools = _pool_analysis(out, scores, results, summary, headline, meaning_preserved)
    comparison = _comparison(out, config, results, summary, main_runs, attacks, headline, meaning_preserved)
    sections = [*_introduction(config, headline, meaning_preserved, _evaluated_images(results)),
                *evaluation_devices_words(results), "", *comparison.lines, "",
                *_tables(main_runs, attacks, pools)]
    plots = {"properties": pools.plot.name}
    if comparison.curves_png is not None:
        plots["learning_curves"] = comparison.curves_png.name
    for more_sections, more_plots in (_n_augmentations_section(out, config, results, summary),
                                      _more_samples_section(out, config, summary)):
        sections += more_sections
        plots.update(more_plots)

    atomic_write_text(out / "report.md", "\n".join(sections) + "\n")
    write_json_atomic(out / "results.json", {
        "config": config, "headline_attack": headline, "headline_meaning_preserved": meaning_preserved,
        "pool_properties": pools.properties, "pool_content": pools.content,
        "correlations": pools.correlations, "pool_gains": pools.gains, "correlations_gain": pools.gain_correlations,
        "summary": summary, "summary_best": comparison.best_summary, "headline": comparison.rows,
        "verdicts": comparison.verdicts, "plots": plots, "runs": results,
    })
    return out / "report.md"


def _headline_choice(config: dict) -> tuple[list[str], str, bool]:
    """The evaluated attacks (clean among them), the headline attack (the configured one, else the
    last evaluated), and whether robust R@1 counts only attacked captions that stay true."""
    attacks = list(config["eval"]["attacks"])
    if "clean" not in attacks:
        attacks = ["clean"] + attacks
    headline = config.get("headline_attack", "sga")
    if headline not in attacks:
        headline = attacks[-1]
    meaning_preserved = config.get("headline_captions", "meaning_preserved") == "meaning_preserved"
    return attacks, headline, meaning_preserved


# headline attacks that change no caption: "counting only captions that stay true" says nothing there
CAPTION_KEEPING_ATTACKS = ("clean", "pgd")


@dataclass
class _PoolAnalysis:
    """Each pool's properties against the robust R@1 of MAT+ trained on it alone and its gain over MAT."""

    properties: dict[str, dict]
    robust: dict[str, tuple]  # pool -> robust R@1 of its single-pool MAT+ run
    gains: dict[str, tuple]
    correlations: dict[str, dict]  # property -> Spearman with `robust`
    gain_correlations: dict[str, dict]  # property -> Spearman with `gains`
    plot: Path
    content: dict[str, str | None]  # pool -> what its diversity and gap were measured on (`pool_content`)


def _pool_analysis(out: Path, scores: dict[str, dict], results: list[dict], summary: dict, headline: str,
                   meaning_preserved: bool) -> _PoolAnalysis:
    """The pools' properties, robustness, gains and their rank correlations; plots properties against robustness."""
    properties = {name: pool_properties(s) for name, s in scores.items() if "@" not in name}
    pool_robust = {pools[0]: row["robust"] for run, row in summary.items()
                   if row["method"] == "mat+" and len(pools := row["pools"]) == 1 and run == f"mat+:{pools[0]}"}
    properties_png, correlations = plot_properties(out, properties, pool_robust)
    gains = pool_gains(results, headline, meaning_preserved)
    gain_correlations = {}
    for prop in ("alignment", "diversity", "gap"):
        pools = [p for p in properties if properties[p][prop] is not None and gains.get(p, (None,))[0] is not None]
        gain_correlations[prop] = spearman([properties[p][prop] for p in pools], [gains[p][0] for p in pools])
    content = {name: pool_content(s) for name, s in scores.items() if "@" not in name}
    return _PoolAnalysis(properties, pool_robust, gains, correlations, gain_correlations, properties_png, content)


@dataclass
class _Comparison:
    """The comparison that matters: its report lines and the numbers results.json keeps of it."""

    lines: list[str]
    best_summary: dict  # `summarise_runs` of the best-on-validation checkpoints ({} without any)
    rows: list[dict]  # `headline_rows`
    verdicts: list[dict]
    curves_png: Path | None


def _comparison(out: Path, config: dict, results: list[dict], summary: dict, main_runs: dict, attacks: list[str],
                headline: str, meaning_preserved: bool) -> _Comparison:
    """Pretrained, the headline runs and every MAT+ run, at the last and best-on-validation checkpoints,
    with MAT+'s verdicts against MAT and the learning curves (plotted)."""
    best_results = [{**r, "eval": r["eval_best"]} for r in results if r.get("eval_best")]
    best_summary = summarise_runs(best_results, attacks, headline, meaning_preserved) if best_results else {}
    mat_plus = [run for run, row in main_runs.items() if row["method"] == "mat+"]
    compared = ["pretrained"] + [r for r in config.get("headline_runs", ["tecoa", "mat"]) if r in summary] + mat_plus
    rows = headline_rows(summary, best_summary, compared)
    verdicts = [dict(v, checkpoint="last", paired=paired_difference(results, run, headline, meaning_preserved))
                for run in mat_plus if (v := verdict(summary, run))]
    verdicts += [dict(v, checkpoint="best-on-val", paired=paired_difference(best_results, run, headline, meaning_preserved))
                 for run in mat_plus if (v := verdict(best_summary, run))]
    adjust_for_comparisons(verdicts)
    validation = config.get("validation")
    curves_png = plot_curves(out, results, [r for r in compared if r != "pretrained"],
                             f"{config['name']}: validation R@1 under {validation.get('attack', headline) if validation else '-'}"
                             f" every {validation['every'] if validation else '-'} steps (mean ± sd over seeds {config['seeds']})")
    lines = [
        "## The comparison that matters",
        "",
        headline_table(rows),
        "",
        *verdict_lines(verdicts),
        *starting_model_words(results, [r for r in compared if r != "pretrained"]),
    ]
    if any((v.get("paired") or {}).get("n", 0) > 1 for v in verdicts):
        lines += ["", "The twice-the-spread rule compares the means over seeds as if the two runs' seeds were independent. "
                  "A MAT+ run and the MAT run of one seed start from the same pretrained weights, see the same items in the "
                  "same order with the same crops and PGD starts, and are evaluated on the same images with the same attack "
                  "seed, so the difference per seed is the paired comparison: its mean ± sd, how many seeds moved up, and "
                  "the 95% t interval of the mean difference (wide at few seeds: t = 4.30 at 3 seeds, 12.71 at 2)."
                  + (f" {len(mat_plus)} MAT+ runs are each compared with MAT: the intervals are not corrected for "
                     "that, the Holm-adjusted p (over the runs with a p, per checkpoint) is." if len(mat_plus) > 1 else "")]
    if curves_png is not None:
        lines += ["", "Learning curves on the validation split (robust: solid, shaded ± sd; clean: dotted); "
                  "the best checkpoint is the step with the highest validation robust R@1.", "",
                  f"![learning curves]({curves_png.name})"]
    return _Comparison(lines, best_summary, rows, verdicts, curves_png)


def _evaluated_images(results: list[dict]) -> int | None:
    """How many images the evaluations ranked (their eval.json), None when none says."""
    for result in results:
        count = ((result.get("eval") or {}).get("settings") or {}).get("num_images")
        if isinstance(count, int) and count > 0:
            return count
    return None


def evaluation_devices_words(results: list[dict]) -> list[str]:
    """A report line saying where the evaluations ran (their eval.json's `device`, recorded since
    2026-12-06; nothing when none records one): one device named in passing, several named loudly with the
    runs on each, since a study resumed on another machine keeps the evaluations it finished (the
    cache keys on what was evaluated, not where) and different kernels move numbers in the last digits.
    Evaluations kept from before 2026-12-06 beside ones that record a device are named too: where they
    ran is unknown (a study resumed on a new machine after the change is that case)."""
    runs_by_device: dict[str, list[str]] = defaultdict(list)
    unrecorded: list[str] = []
    for result in results:
        for key, which in (("eval", ""), ("eval_best", " (best checkpoint)")):
            evaluation = result.get(key)
            if not evaluation or (key == "eval_best" and evaluation is result.get("eval")):  # the last step was the best
                continue
            device = (evaluation.get("settings") or {}).get("device")
            (runs_by_device[device] if device else unrecorded).append(f"{result['run']} seed {result['seed']}{which}")
    if not runs_by_device:
        return []
    if len(runs_by_device) == 1 and not unrecorded:
        return ["", f"Every evaluation ran on `{next(iter(runs_by_device))}`."]
    groups = [f"{device}: {', '.join(runs)}" for device, runs in sorted(runs_by_device.items())]
    if unrecorded:
        groups.append(f"no device recorded (evaluated before 2026-12-06): {', '.join(unrecorded)}")
    lead = ("The evaluations ran on different devices" if len(runs_by_device) > 1
            else "Not every evaluation records where it ran")
    return ["", f"**{lead}** ({'; '.join(groups)}): numbers from other kernels can differ in "
                "their last digits; delete a run's folder under `evals/` and run the study again to evaluate it anew."]


def _pretrained_words(pretrain: dict) -> str:
    """Where the fine-tuned CLIP came from: pretrained here, or another study's model (`pretrain.checkpoint`,
    whose steps and scenes are that study's, not this config's)."""
    if pretrain.get("checkpoint"):
        return f") from the pretrained CLIP `{pretrain['checkpoint']}` (another study's; its steps and scenes are that study's). "
    return (f") from a CLIP pretrained for {pretrain['steps']} steps on "
            + ("the train scenes outside the fine-tuning set. " if pretrain.get("scenes") == "rest" else "every train scene. "))


def _introduction(config: dict, headline: str, meaning_preserved: bool, images: int | None = None) -> list[str]:
    """The report's title, the study's setting (model, fine-tuning, evaluation) and what robust R@1 means;
    `images`: how many images the evaluations ranked (chance at TR@1 is one in that many)."""
    captions = config.get("finetune_captions")
    limit, per_image = config["eval"]["limit"], config["eval"]["captions_per_image"]
    # eval.limit and captions_per_image may be null (every image, every caption); the split may hold fewer than the limit
    gallery = (f"{images} images" if images else f"up to {limit} images" if limit else "every image") + " x " \
        + (f"{per_image} captions" if per_image else "all their captions")
    return [
        f"# Study report: {config['name']}",
        "",
        f"Model `{config['model']}`, seeds {config['seeds']}; fine-tuning on {config['finetune_scenes']} train scenes "
        f"for {config['train']['max_steps']} steps (batch {config['train']['batch_size']}, attack eps {config['train']['attack_eps']}, "
        f"{config['train']['pgd_steps']} PGD steps, text candidates `{config['train']['text_candidates']}`, word budget "
        f"{config['train']['word_budget']}" + (f", masked LM `{config['train']['mlm']}`" if config['train'].get('mlm') else "")
        + _pretrained_words(config["pretrain"])
        + (f"The fine-tuning source keeps {captions['per_image']} caption(s) per train image ({captions.get('choice', 'rotate')}). " if captions else "")
        + f"Text attacks in evaluation use the masked LM `{config['eval']['mlm']}`. "
        f"Evaluation: {config['eval']['split']} split, {gallery}, attack eps {config['eval']['attack_eps']}, {config['eval']['pgd_steps']} PGD steps, "
        + _protocol_words(config["eval"]) + ".",
        "",
        f"R@1 = mean of TR@1 and IR@1 in percent (mean ± standard deviation over seeds); **robust R@1** is R@1 under "
        f"`{headline}`" + (" counting only attacked captions that stay true (see below)"
                           if meaning_preserved and headline not in CAPTION_KEEPING_ATTACKS else "")
        + (f". Chance is {100 / images:.1f}% for TR@1." if images else "."),
    ]


def _tables(main_runs: dict, attacks: list[str], pools: _PoolAnalysis) -> list[str]:
    """The sections after the comparison: R@1 per method and pool, text attacks and meaning, pool properties."""
    return [
        "## Clean and robust R@1 per method and pool",
        "",
        main_table(main_runs, attacks),
        "",
        "## Text attacks and meaning",
        "",
        "The world's truth checker judges every attacked caption. An attacked caption that is false of its image "
        "(e.g. red -> blue) is not a robustness failure when the model rejects it, so 'R@1 meaning-preserved' counts "
        "only attacks that kept the caption true (a false one counts as not attacked).",
        "",
        meaning_table(main_runs, attacks),
        "",
        "## Pool properties and robustness",
        "",
        pool_table(pools.properties, pools.robust, pools.gains),
        *pool_content_words(pools.content),
        "",
        "Spearman rank correlations over the pools (the gain is MAT+'s robust R@1 minus MAT's, paired by seed; "
        f"p: two-sided, exact permutation test up to {EXACT_SPEARMAN_MAX_N} pools, else scipy's t approximation; "
        "three properties tested, no correction for that):",
        "",
        correlation_table(pools.correlations, pools.gain_correlations),
        "",
        f"![properties]({pools.plot.name})",
    ]


def _n_augmentations_section(out: Path, config: dict, results: list[dict], summary: dict) -> tuple[list[str], dict]:
    """Robust R@1 against the number of augmentations per item (the n_aug sweep's runs, then the whole
    pool), plotted; its report lines and {plot name}, both empty without the sweep."""
    sweep = config.get("n_aug_sweep") or {}
    sweep_rows = sorted(((r["n_aug"], r["run"]) for r in results if r["group"] == "n_aug"), key=lambda t: t[0])
    if not sweep_rows:
        return [], {}
    labels, stats = [], []
    for k, run in dict.fromkeys(sweep_rows):
        labels.append(str(k))
        stats.append(summary[run]["robust"])
    full = summary.get(f"mat+:{sweep['pool']}")
    if full is not None:
        labels.append(f"all ({config['pools'][sweep['pool']].get('n', '?')})")
        stats.append(full["robust"])
    path = plot_series(out, "robust_vs_n_augmentations.png", labels, stats, "augmentations per item",
                       f"MAT+ with pool '{sweep['pool']}'", bars=False)
    lines = ["", "## Robust R@1 against the number of augmentations per item", "",
             "| augmentations per item | robust R@1 |", "|---|---|"]
    lines += [f"| {label} | {fmt(stat)} |" for label, stat in zip(labels, stats)]
    lines += ["", f"![n augmentations]({path.name})"]
    return lines, {"n_augmentations": path.name}


def _more_samples_section(out: Path, config: dict, summary: dict) -> tuple[list[str], dict]:
    """Four ways of using more samples at equal steps, plotted; its report lines and {plot name},
    both empty without a `more_samples` pool."""
    more = config.get("more_samples") or {}
    if not more.get("pool"):
        return [], {}
    pool = more["pool"]
    ways = [("original pairs only (mat)", "mat"), ("pool as independent pairs (mat+ expand)", f"mat+expand:{pool}"),
            ("pool sampled 1:N (mat+)", f"mat+:{pool}"),
            (f"{oracle_factor(config)}x original scenes (oracle)", "mat:oracle")]
    ways = [(label, run) for label, run in ways if run in summary]
    path = plot_series(out, "more_samples.png", [l for l, _ in ways], [summary[r]["robust"] for _, r in ways],
                       "", f"four ways to use more samples (equal steps; pool '{pool}')", bars=True)
    lines = ["", "## Four ways of using more samples, at equal steps", "",
             "| way | clean R@1 | robust R@1 |", "|---|---|---|"]
    lines += [f"| {label} | {fmt(summary[run]['clean']['r@1'])} | {fmt(summary[run]['robust'])} |" for label, run in ways]
    lines += ["", f"![more samples]({path.name})"]
    return lines, {"more_samples": path.name}



# ----------------------------------------------------------------------------- other tasks


def task_table(results: list[dict]) -> tuple[str, dict[str, dict]]:
    """The comparison table of a non-retrieval study: one row per run (pretrained, each method,
    mat+ per pool), the arm's clean and robust metric and its numeric extras, mean ± sd over seeds.

    Each result carries `headline` (the arm's `headline(report)`); returns (markdown, summary)."""
    by_run: dict[str, list[dict]] = defaultdict(list)
    for result in results:
        by_run[result["run"]].append(result["headline"])
    first = results[0]["headline"]
    metric, attack = first["metric"], first["attack"]
    extras = [key for key, value in first.items()
              if key not in ("metric", "clean", "robust", "attack") and (value is None or isinstance(value, (int, float)))]
    header = ["run", f"clean {metric}", f"**robust {metric}** ({attack})"] + [key.replace("_pct", " (%)").replace("_", " ") for key in extras]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    summary: dict[str, dict] = {}
    for run, headlines in by_run.items():
        row = {key: mean_std([h.get(key) for h in headlines]) for key in ("clean", "robust", *extras)}
        summary[run] = {"metric": metric, "attack": attack, **row}
        lines.append("| " + " | ".join([run] + [fmt(row[key]) for key in ("clean", "robust", *extras)]) + " |")
    return "\n".join(lines), summary


def write_task_report(out: Path, config: dict, results: list[dict]) -> Path:
    """report.md and results.json of a study whose `task` is not retrieval (analysis.task_arms)."""
    out = Path(out)
    table, summary = task_table(results)
    metric, attack = results[0]["headline"]["metric"], results[0]["headline"]["attack"]
    e, t = config["eval"], config["train"]
    sections = [
        f"# Study report: {config['name']} (task {config['task']})",
        "",
        f"Model `{config['model']}`, seeds {config['seeds']}; fine-tuning on {config['finetune_scenes']} train scenes "
        f"for {t['max_steps']} steps (batch {t['batch_size']}, attack eps {t['attack_eps']}, {t['pgd_steps']} PGD steps, "
        f"text candidates `{t['text_candidates']}`, word budget {t['word_budget']}) from a model trained clean for "
        f"{config['pretrain']['steps']} steps on "
        + ("the train scenes outside the fine-tuning set" if config["pretrain"].get("scenes") == "rest" else "every train scene")
        + f". Evaluation: {e.get('split')} split, up to "
        f"{e.get('limit')} images, attacks {', '.join(e.get('attacks') or [])}, attack eps {e.get('attack_eps')}, "
        f"{e.get('pgd_steps')} PGD steps.",
        *evaluation_devices_words(results),
        "",
        f"## Clean and robust {metric} per method and pool",
        "",
        table,
        "",
        f"Mean ± standard deviation over seeds; **robust {metric}** is {metric} under `{attack}`; further columns "
        "are the arm's own numbers (e.g. the share of outputs the sample world's truth checker calls true). "
        "Each run's eval.md (under evals/) has every attack.",
    ]
    atomic_write_text(out / "report.md", "\n".join(sections) + "\n")
    write_json_atomic(out / "results.json", {"config": config, "task": config["task"], "metric": metric,
                                             "headline_attack": attack, "summary": summary, "runs": results})
    return out / "report.md"


# ----------------------------------------------------------------------------- several studies


def regimes_table(study_dirs: list[Path]) -> str:
    """One Markdown table of the headline comparison of several finished studies (one regime
    each): every run, clean and robust R@1 at the last and the best-on-validation checkpoint,
    then the MAT+ - MAT verdicts."""
    lines = ["| regime | model | clean R@1 | robust R@1 | clean R@1 (best val) | robust R@1 (best val) |",
             "|---|---|---|---|---|---|"]
    verdicts = []
    from analysis.study import read_study_record

    for folder in study_dirs:
        path = Path(folder) / "results.json"
        results = read_study_record(path)  # a damaged or foreign file: one line naming it, not a traceback
        problem = _results_shape_problem(results)
        if problem:
            raise MatPlusError(f"{path}: not a study's results ({problem})")
        name = results["config"]["name"]
        if not isinstance(results.get("headline"), list):  # a captioning or grounding study: other metrics
            task = (results.get("config") or {}).get("task", "another task")
            raise MatPlusError(f"{folder}: a {task} study has no retrieval R@1 table; `analysis regimes` "
                               "compares retrieval studies (read its report.md)")
        for row in results["headline"]:
            def cell(key):
                return fmt(tuple(row[key])) if row.get(key) else "-"
            lines.append(f"| {name} | {row['run']} | {cell('clean')} | {cell('robust')} | {cell('clean_best')} | {cell('robust_best')} |")
        verdicts += [f"* {name}: " + line[2:] for line in verdict_lines(results.get("verdicts", []))]
    return "\n".join(lines + [""] + verdicts)
