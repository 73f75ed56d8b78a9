"""`analysis` command line: `study` runs the property-robustness study, `compare` tabulates evaluations."""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from augment.atomic import atomic_write_text
from augment.arguments import file_path, folder_path, seed_list
from augment.cli_common import run_main
from augment.errors import MatPlusError
from augment.json_records import DamagedRecord, is_number, read_json_object
from analysis.config import bundled_config_names
from train.eval_report import EVAL_JSON


def _study(args) -> int:
    from analysis.config import load_study_config
    from analysis.study import Study

    overrides = {}
    if args.out:
        overrides["out"] = args.out
    if args.seeds is not None:
        overrides["seeds"] = args.seeds
    config = load_study_config(args.config, overrides)
    report = Study(config).run()
    print(f"report: {report}")
    return 0


def find_evaluations(paths: list[str]) -> list[tuple[str, dict]]:
    """eval.json files from the given folders (an eval folder, a run folder, or a study's evals/)."""
    found, places, seen = [], [], set()
    for raw in paths:
        path = Path(raw)
        candidates = [path] if path.is_file() else sorted(path.glob(EVAL_JSON)) or sorted(path.glob(f"*/{EVAL_JSON}"))
        if not candidates:
            raise MatPlusError(f"{raw}: no eval.json here (run `train eval ... --out DIR` first)")
        for candidate in candidates:
            resolved = candidate.resolve()
            if resolved in seen:  # one file named twice (a folder and its eval.json): one evaluation
                continue
            seen.add(resolved)
            try:
                report = read_json_object(candidate)
            except DamagedRecord as damage:
                problem = str(damage)
            else:
                problem = _shape_problem(report)
            if problem:
                raise MatPlusError(f"{candidate}: not an evaluation report ({problem}); run `train eval` again")
            found.append(report)
            places.append((resolved.parent, None) if resolved.name == EVAL_JSON else (resolved.with_suffix(""), resolved))
    # a file is placed at its path without the suffix (`x/mat.json`: `x/mat`), unless another evaluation is placed
    # there too (`x/mat/eval.json`): then at its own name, which no depth would tell apart otherwise
    stems = Counter(place for place, _ in places)
    return list(zip(distinct_suffixes([file if file is not None and stems[place] > 1 else place
                                       for place, file in places]), found))


def distinct_suffixes(paths: list[Path]) -> list[str]:
    """Each path's label: its last name, or as many of its last names as tell it apart from the others
    (`a/done`, `b/done`), as tools that tell files of one name apart do. The same paths give the same
    labels whatever else is named beside them that does not share their last names."""
    depth = [1] * len(paths)

    def label(i: int) -> str:
        return str(Path(*paths[i].parts[-depth[i]:]))

    while True:
        groups: dict[str, list[int]] = {}
        for i in range(len(paths)):
            groups.setdefault(label(i), []).append(i)
        deeper = [i for group in groups.values() if len(group) > 1 for i in group if depth[i] < len(paths[i].parts)]
        if not deeper:
            return [label(i) for i in range(len(paths))]
        for i in deeper:
            depth[i] += 1


# the metrics `analysis compare` formats as numbers (a string there was a ValueError traceback)
_COMPARED_METRICS = ("tr@1", "ir@1", "rsum", "cider", "accuracy")


def _shape_problem(report) -> str | None:
    """What of an eval.json `analysis compare` reads has the wrong shape (None: nothing): every value
    the tables read is checked here, so a hand-edited or foreign file is one line, not a traceback."""
    if not isinstance(report, dict):
        return "an object whose 'attacks' map names to objects"
    attacks = report.get("attacks", {})
    if not isinstance(attacks, dict) or not all(isinstance(entry, dict) for entry in attacks.values()):
        return "an object whose 'attacks' map names to objects"
    for attack, entry in attacks.items():
        for key in _COMPARED_METRICS:
            if key in entry and not is_number(entry[key]):
                return f"attacks.{attack}.{key} must be a number, got {entry[key]!r}"
    if not isinstance(report.get("task", "retrieval"), str):
        return f"'task' must be a task name, got {report['task']!r}"
    for key in ("settings", "attacker", "victim"):
        if not isinstance(report.get(key, {}), dict):
            return f"'{key}' must be an object, got {report[key]!r}"
    options = report.get("settings", {}).get("attack_options", {})
    if not isinstance(options, dict):
        return f"'settings.attack_options' must be an object, got {report['settings']['attack_options']!r}"
    for key in ("protocol", "attack_protocol", "attacked_embedding", "caption_preprocess"):  # the label reads them
        where = report.get("settings", {}) if key == "caption_preprocess" else options
        if where.get(key) is not None and not isinstance(where[key], str):
            return f"'settings.{'' if key == 'caption_preprocess' else 'attack_options.'}{key}' must be a name, got {where[key]!r}"
    return None


# what one cell of `analysis compare` shows per task: (column suffix, cell of an attack's entry)
_COMPARE_CELLS = {
    "retrieval": ("TR@1/IR@1", lambda e: f"{e['tr@1']:.1f} / {e['ir@1']:.1f}"),
    "captioning": ("CIDEr", lambda e: f"{e['cider']:.1f}"),
    "grounding": ("accuracy", lambda e: f"{e['accuracy']:.1f}"),
}


def compare_table(evaluations: list[tuple[str, dict]]) -> str:
    """One table per task (retrieval, captioning, grounding) of the evaluations found."""
    by_task: dict[str, list[tuple[str, dict]]] = {}
    for name, report in evaluations:
        by_task.setdefault(report.get("task", "retrieval"), []).append((name, report))
    return "\n\n".join(_task_table(task, found) for task, found in by_task.items())


def _task_table(task: str, evaluations: list[tuple[str, dict]]) -> str:
    from data_cards.render import markdown_cell
    from train.attacks import ATTACK_NAMES

    if task not in _COMPARE_CELLS:
        raise MatPlusError(f"analysis compare: {evaluations[0][0]} is an evaluation of task {task!r}, "
                           f"not one of {', '.join(_COMPARE_CELLS)}")
    suffix, cell = _COMPARE_CELLS[task]
    present = {a for _, report in evaluations for a in report.get("attacks", {})}
    # the attacks' canonical order (eval.json may hold them sorted), then any others
    attacks = [a for a in ATTACK_NAMES if a in present] + sorted(present - set(ATTACK_NAMES))
    protocols = [_protocol_label(report) for _, report in evaluations]
    # numbers under a reference protocol are not the project protocol's: say which row is which (retrieval
    # and grounding carry a protocol; captioning refuses them, so its label is always "project")
    by_protocol = any(protocol != "project" for protocol in protocols)
    # captioning's scores under --segment-cjk read other tokens than unsegmented ones: say which row is which
    segmentations = [str(report.get("settings", {}).get("segment_cjk") or "none") for _, report in evaluations]
    by_segmentation = any(segmentation != "none" for segmentation in segmentations)
    header = (["evaluation"] + (["protocol"] if by_protocol else []) + (["CJK segmented"] if by_segmentation else [])
              + [f"{a} {suffix}" for a in attacks] + (["RSUM (clean)"] if task == "retrieval" else []))
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (name, report), protocol, segmentation in zip(evaluations, protocols, segmentations):
        entries = report.get("attacks", {})
        cells = ([markdown_cell(name)] + ([protocol] if by_protocol else [])  # a folder name may hold "|"
                 + ([markdown_cell(segmentation)] if by_segmentation else [])
                 + ["-" if entries.get(attack) is None else _cell(cell, entries[attack], name, attack) for attack in attacks])
        if task == "retrieval":
            clean = entries.get("clean", {})
            cells.append(f"{clean['rsum']:.1f}" if "rsum" in clean else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(cell, entry: dict, name: str, attack: str) -> str:
    try:
        return cell(entry)
    except (KeyError, TypeError, ValueError):
        raise MatPlusError(f"{name}: the {attack!r} entry of its eval.json lacks its metrics; run `train eval` again") from None


def _protocol_label(report: dict) -> str:
    """The attack protocol an eval.json was measured under (`sga+bugs` with `--reference-bugs`;
    `co-attack/multimodal` for the fused-embedding attacks; `sga (captions: none)` or
    `sga (captions: blip_pre_caption)` where the captions were not preprocessed as the protocol
    preprocesses them, `--caption-preprocess`)."""
    from train.attacks.protocols import PROTOCOL_CHOICES
    from train.attacks.settings import canonical_options

    settings = report.get("settings", {})
    options = canonical_options(settings.get("attack_options", {}))  # older spellings too
    protocol = options.get("protocol", "project")
    embedding = options.get("attacked_embedding", "unimodal")
    label = (protocol + ("" if embedding == "unimodal" else f"/{embedding}")
             + ("+bugs" if options.get("reference_bugs") else ""))
    # a protocol's numbers include its caption preprocessing (item 7): another one is another protocol's
    # numbers (a report without the setting, or of a protocol unknown here, says nothing of it)
    captions = settings.get("caption_preprocess")
    default = PROTOCOL_CHOICES[protocol].caption_preprocess if protocol in PROTOCOL_CHOICES else None
    if captions and default and captions != default:
        label += f" (captions: {captions})"
    return label


def _model_label(entry: dict) -> str:
    """The model as the evaluation named it (a checkpoint trained from a twin by its own path, not
    the twin's name: they are different models); a Hub/open_clip model with its pretrained tag."""
    name = str(entry.get("name") or entry.get("tiny_twin") or "?")
    return f"{name}:{entry['pretrained']}" if entry.get("pretrained") and not entry.get("tiny_twin") else name


def _model_identities(report: dict) -> tuple[tuple, tuple]:
    """(attacker, victim): each model as the evaluation identifies it: its entry (family, name, pretrained
    tag, ...), and for a run's checkpoint the training step and the absolute path of the folder it was
    read from (`settings.checkpoint_step`, `checkpoint_path`; the attacker's `attacker_...`), where
    recorded. A name alone is the path as given: `runs/mat/ckpt` of two study folders is two models."""
    import json

    settings = report.get("settings", {})

    def identity(entry, step, path) -> tuple:
        entry = entry if isinstance(entry, dict) else {}
        return (_model_label(entry), json.dumps(entry, sort_keys=True, default=str),
                json.dumps(step, default=str), path if isinstance(path, str) else None)

    victim = identity(report.get("victim"), settings.get("checkpoint_step"), settings.get("checkpoint_path"))
    if settings.get("mode") == "white-box":  # the attacker is the victim (its step and path recorded once)
        return victim, victim
    return identity(report.get("attacker"), settings.get("attacker_checkpoint_step"),
                    settings.get("attacker_checkpoint_path")), victim


def _identity_labels(identities: list[tuple]) -> dict[tuple, str]:
    """Each model identity's label in the transfer tables: its name (`_model_label`), and where two
    identities share one, what tells them apart: the shortest distinct end of their folders' paths, the
    training step, or (nothing recorded differs) their order."""
    by_label: dict[str, list[tuple]] = {}
    for identity in dict.fromkeys(identities):
        by_label.setdefault(identity[0], []).append(identity)
    labels = {}
    for label, shared in by_label.items():
        if len(shared) == 1:
            labels[shared[0]] = label
            continue
        paths = [identity[3] for identity in shared]
        wheres = distinct_suffixes([Path(p) for p in paths]) if all(paths) and len(set(paths)) == len(paths) else None
        steps = {identity[2] for identity in shared}
        for k, identity in enumerate(shared):
            said = ([f"in {wheres[k]}"] if wheres else []) + ([f"step {identity[2]}"] if len(steps) > 1 else [])
            labels[identity] = f"{label} ({', '.join(said) or f'model {k + 1}'})"
    return labels


def transfer_tables(evaluations: list[tuple[str, dict]]) -> str:
    """Source (attacker) x target (victim) tables of mean R@1 ((TR@1 + IR@1) / 2) under each attack
    and protocol, from white-box and transfer evaluations; empty when they hold fewer than two
    models. Two evaluations of one cell both show, in the order given, with a note naming them
    (one used to replace the other silently)."""
    from train.attacks import ATTACK_NAMES

    cells: dict[tuple[str, str], dict[tuple[str, str], list[tuple[float, str]]]] = {}
    sources, targets = [], []
    measured = []
    for name, report in evaluations:
        attacked = {attack: entry for attack, entry in report.get("attacks", {}).items()
                    if attack != "clean" and "tr@1" in entry}
        if attacked:  # else a captioning or grounding report (or clean only): no retrieval model to tabulate
            measured.append((name, report, attacked, *_model_identities(report)))
    labels = _identity_labels([identity for *_, attacker, victim in measured for identity in (attacker, victim)])
    for name, report, attacked, attacker, victim in measured:
        attacker, victim = labels[attacker], labels[victim]
        protocol = _protocol_label(report)
        for label, seen in ((attacker, sources), (victim, targets)):
            if label not in seen:
                seen.append(label)
        for attack, entry in attacked.items():
            cell = cells.setdefault((attack, protocol), {}).setdefault((attacker, victim), [])
            cell.append(((entry["tr@1"] + entry["ir@1"]) / 2, name))
    if len(set(sources) | set(targets)) < 2:
        return ""
    sources, targets = sorted(sources), sorted(targets)
    protocols = sorted({protocol for _, protocol in cells})
    order = {attack: i for i, attack in enumerate(ATTACK_NAMES)}
    blocks = []
    for attack, protocol in sorted(cells, key=lambda key: (order.get(key[0], len(order)), key[0], key[1])):
        table = cells[(attack, protocol)]
        under = f"{attack}, protocol {protocol}" if len(protocols) > 1 else attack
        lines = [f"R@1 under {under} (mean of TR@1 and IR@1): rows = source (attacker), columns = target (victim)", "",
                 "| source \\ target | " + " | ".join(targets) + " |", "|" + "---|" * (len(targets) + 1)]
        for source in sources:
            row = [" / ".join(f"{value:.1f}" for value, _ in table[(source, t)]) if (source, t) in table else "-"
                   for t in targets]
            lines.append(f"| {source} | " + " | ".join(row) + " |")
        shared = [(pair, [name for _, name in measured]) for pair, measured in table.items() if len(measured) > 1]
        for (source, target), names in shared:
            lines.append(f"\n{source} -> {target}: {len(names)} evaluations, in this order: {', '.join(names)}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _compare(args) -> int:
    evaluations = find_evaluations(args.evaluations)
    table = compare_table(evaluations)
    transfer = transfer_tables(evaluations)
    if transfer:
        table += "\n\n" + transfer
    print(table)
    if args.out:
        atomic_write_text(args.out, table + "\n")
    return 0


def _regimes(args) -> int:
    from analysis.report import regimes_table

    missing = [d for d in args.studies if not (Path(d) / "results.json").exists()]
    if missing:
        raise MatPlusError(f"{missing[0]}: no results.json (run `analysis study` into it first)")
    table = regimes_table([Path(d) for d in args.studies])
    print(table)
    if args.out:
        atomic_write_text(args.out, table + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(allow_abbrev=False, prog="analysis", description="Which pool properties predict robustness.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    study = sub.add_parser("study", allow_abbrev=False, help="build pools, score them, train and evaluate every method, write the report")
    study.add_argument("--config", default="default", metavar="FILE|NAME", help="STUDY.yaml, or a bundled config name: "
                       + ", ".join(bundled_config_names()))
    study.add_argument("--out", default=None, type=folder_path, help="output folder (default: the config's)")
    study.add_argument("--seeds", type=seed_list, default=None, help="comma-separated seeds, e.g. 0,1,2 (default: the config's)")
    study.set_defaults(func=_study, interrupted="finished steps are kept; re-run the same command to resume")
    compare = sub.add_parser("compare", allow_abbrev=False, help="print a table of finished evaluations")
    compare.add_argument("evaluations", nargs="+", metavar="EVAL", help="eval folders, run folders, eval.json files, or a study's evals/")
    compare.add_argument("--out", default=None, type=file_path, help="also write the table (Markdown) here")
    compare.set_defaults(func=_compare)
    regimes = sub.add_parser("regimes", allow_abbrev=False, help="one table of the headline comparison of several finished studies")
    regimes.add_argument("studies", nargs="+", metavar="STUDY", help="study output folders (each with results.json)")
    regimes.add_argument("--out", default=None, type=file_path, help="also write the table (Markdown) here")
    regimes.set_defaults(func=_regimes)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_main(build_parser, argv)


if __name__ == "__main__":
    sys.exit(main())
