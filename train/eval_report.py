"""An evaluation's report files, for every task: eval.json and eval.md (`write_report`), and the
settings lines every eval.md ends with (`settings_markdown`). Each task renders its own table."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from augment.atomic import atomic_write_text
from train.attacks.settings import describe_params

# the report files' names in an evaluation's folder (written here, read by `train eval`'s resume
# check, the study and `analysis compare`)
EVAL_JSON = "eval.json"
EVAL_MD = "eval.md"


def percent_cell(value: float | None) -> str:
    """An eval.md table cell of a percentage: one decimal, or "-" where it is undefined (None)."""
    return "-" if value is None else f"{value:.1f}"


def write_report(report: dict, out_dir: str | Path, table: Callable[[dict], str]) -> str:
    """Write eval.json and eval.md into `out_dir` (each atomically); returns the markdown table.

    `table`: the task's markdown renderer (`train.evaluate.markdown_report` for retrieval,
    `train.evaluate_captioning.markdown_report`, `train.evaluate_grounding.markdown_grounding_report`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = table(report)
    atomic_write_text(out / EVAL_JSON, json.dumps(report, indent=2, default=str) + "\n")
    atomic_write_text(out / EVAL_MD, table)
    return table


def settings_markdown(report: dict) -> list[str]:
    """eval.md's settings lines (every task): the attack protocol where the task has one, the
    caption preprocessing, precision and seed, then each attack's parameters as it ran, so a
    number in the table can be read against a paper's without opening eval.json."""
    settings = report["settings"]
    options = settings.get("attack_options", {})
    said = []
    # grounding's project-protocol options leave the protocol out (its eval.json never recorded one)
    protocol = options.get("protocol") or ("project" if report.get("task") == "grounding" else None)
    if protocol:
        said.append(f"attack protocol `{protocol}`"
                    + (" with the reference code's bugs (`--reference-bugs`)" if options.get("reference_bugs") else ""))
    if options.get("attacked_embedding", "unimodal") != "unimodal":
        reading = ("its [CLS] state" if options["attacked_embedding"] == "multimodal-cls"
                   else "every state, the caption padded to 30 tokens")
        said.append(f"attacked embedding `{options['attacked_embedding']}` (the fusion encoder's output of each pair: "
                    f"{reading})")
    if settings.get("transfer_hand_over") == "sga-scripts":
        said.append(f"adversarial images handed to the victim as the SGA transfer scripts do "
                    f"({_sga_scripts_hand_over_words(report.get('victim', {}).get('family'))}; Protocols item 13)")
    if settings.get("caption_preprocess"):
        said.append(f"captions preprocessed: {settings['caption_preprocess']}")
    if settings.get("segment_cjk", "none") != "none":  # captioning's metrics
        said.append(f"Chinese and Japanese text segmented for the metrics: {settings['segment_cjk']}")
    said += [f"precision {settings.get('precision', 'fp32')}"
             + (f" on {settings['device']}" if settings.get("device") else ""),  # reports before 2026-12-06: none
             f"seed {settings.get('seed')}"]
    if settings.get("skipped_records"):
        said.append(f"{settings['skipped_records']} bad source records skipped (`--skip-bad`)")
    attacks = [f"- `{name}`{_parts_off_words(entry['params'])}: {describe_params(entry['params'])}"
               for name, entry in report["attacks"].items() if entry.get("params")]
    if not attacks:  # clean only
        return ["", "Settings: " + "; ".join(said) + "."]
    return ["", "Settings: " + "; ".join(said) + ". Each attack ran with:", "", *attacks]


def _parts_off_words(params: dict) -> str:
    """The words " (its text part off: budget 0)" for a multimodal attack whose budgets switch a part off (sep with
    --word-budget 0 runs as its image attack alone, prompt-pgd as its image attack; `train eval` refuses an attack
    with every part off), else ""."""
    off = {part: "budget 0" if value.get("budget") == 0 else "eps 0" for part, value in params.items()
           if isinstance(value, dict) and (value.get("budget") == 0 or value.get("eps") == 0)}  # image, text, prompt
    if not off:
        return ""
    return f" (its {' and '.join(off)} part{'s' if len(off) > 1 else ''} off: {', '.join(off.values())})"


def _sga_scripts_hand_over_words(victim_family: str | None) -> str:
    """What the SGA transfer scripts' hand-over did to the images, for a victim of `victim_family`
    (`train.eval_common.sga_scripts_hand_over` picks by the same family list): the scripts treat a
    CLIP and the other families differently, so eval.md must not say one for the other."""
    from train.attacks.protocols import CLIP_FAMILIES

    if victim_family is None:  # a report without its victim's family: say both
        return "8-bit to ALBEF/TCL and the other families, float to a CLIP"
    if victim_family in CLIP_FAMILIES:
        return f"to a CLIP ({victim_family}): float pixels, bicubic Resize + CenterCrop, no 8-bit step"
    return f"to {victim_family}: through an 8-bit image, then bicubic Resize"
