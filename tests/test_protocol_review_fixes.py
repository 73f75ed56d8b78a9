"""Fixes from a review of the reference protocols' reporting and refusals: `analysis compare`'s
protocol column and labels, eval.md's words on the SGA transfer hand-over, which attacks read
`--reference-bugs` on a fused embedding, and a misspelt `--attacks` as one line."""
from __future__ import annotations

import pytest

from analysis.cli import _protocol_label, compare_table

GROUNDING = {"task": "grounding", "attacks": {"clean": {"accuracy": 62.0}, "pgd": {"accuracy": 31.0}}}
RETRIEVAL = {"attacks": {"clean": {"tr@1": 80.0, "ir@1": 70.0, "rsum": 400.0}}}


def _with_settings(report: dict, **settings) -> dict:
    return {**report, "settings": settings}


# item 1: grounding's reference protocols are named as retrieval's


def test_compare_names_the_protocol_of_a_grounding_evaluation():
    project = _with_settings(GROUNDING, attack_options={"protocol": "project"})
    co_attack = _with_settings(GROUNDING, attack_options={"protocol": "co-attack", "reference_bugs": True})
    lines = compare_table([("p", project), ("c", co_attack)]).splitlines()
    assert lines[0] == "| evaluation | protocol | clean accuracy | pgd accuracy |"
    assert lines[2:] == ["| p | project | 62.0 | 31.0 |", "| c | co-attack+bugs | 62.0 | 31.0 |"]


def test_compare_adds_no_protocol_column_where_every_evaluation_is_the_projects():
    captioning = {"task": "captioning", "attacks": {"clean": {"cider": 91.0}}}
    table = compare_table([("g", _with_settings(GROUNDING, attack_options={"protocol": "project"})), ("c", captioning)])
    assert "protocol" not in table
    assert table.splitlines() == ["| evaluation | clean accuracy | pgd accuracy |", "|---|---|---|", "| g | 62.0 | 31.0 |", "",
                                  "| evaluation | clean CIDEr |", "|---|---|", "| c | 91.0 |"]


# item 4: captions not preprocessed as the protocol does are part of its label


@pytest.mark.parametrize("protocol, captions, label", [
    ("sga", "none", "sga (captions: none)"), ("sga", "pre_caption", "sga"), ("co-attack", None, "co-attack"),
    ("project", "none", "project"), ("project", "pre_caption", "project (captions: pre_caption)"),
    ("sga", "blip_pre_caption", "sga (captions: blip_pre_caption)"),
    ("project", "blip_pre_caption", "project (captions: blip_pre_caption)")])
def test_protocol_label_says_captions_other_than_the_protocols(protocol, captions, label):
    settings = {"attack_options": {"protocol": protocol}, **({"caption_preprocess": captions} if captions else {})}
    assert _protocol_label(_with_settings(RETRIEVAL, **settings)) == label


def test_compare_tells_an_sga_run_without_pre_caption_from_one_with_it():
    with_it = _with_settings(RETRIEVAL, attack_options={"protocol": "sga"}, caption_preprocess="pre_caption")
    without = _with_settings(RETRIEVAL, attack_options={"protocol": "sga"}, caption_preprocess="none")
    lines = compare_table([("a", with_it), ("b", without)]).splitlines()
    assert lines[2].startswith("| a | sga |") and lines[3].startswith("| b | sga (captions: none) |")


# item 2: eval.md describes the hand-over the victim's family got


def _transfer_report(victim_family: str | None) -> dict:
    return {"victim": {"family": victim_family} if victim_family else {},
            "settings": {"transfer_hand_over": "sga-scripts", "seed": 0, "attack_options": {"protocol": "sga"}},
            "attacks": {"clean": {"params": {}}}}


def test_eval_md_says_a_clip_victim_got_float_pixels():
    from train.eval_report import settings_markdown

    said = " ".join(settings_markdown(_transfer_report("open_clip")))
    assert "as the SGA transfer scripts do" in said and "Resize + CenterCrop" in said
    assert "no 8-bit step" in said and "through an 8-bit image" not in said


def test_eval_md_says_an_albef_victim_got_8_bit_pixels():
    from train.eval_report import settings_markdown

    said = " ".join(settings_markdown(_transfer_report("albef")))
    assert "to albef: through an 8-bit image" in said and "CenterCrop" not in said


def test_eval_md_without_the_victims_family_says_both():
    from train.eval_report import settings_markdown

    said = " ".join(settings_markdown(_transfer_report(None)))
    assert "8-bit to ALBEF/TCL" in said and "float to a CLIP" in said


def test_eval_md_family_rule_is_the_hand_overs():
    """eval.md's words and `HAND_OVERS` pick by one family list: a CLIP family is handed float pixels."""
    from train.attacks.protocols import CLIP_FAMILIES
    from train.eval_report import settings_markdown

    for family in CLIP_FAMILIES:
        assert "no 8-bit step" in " ".join(settings_markdown(_transfer_report(family)))


# item 3: every fused text attack reads --reference-bugs


def _eval_refusal(tmp_path, capsys, *extra: str) -> str:
    """`train eval` stopped before the data is read: its one error line (the missing source's, when every
    check before it passed)."""
    from train.cli import main

    code = main(["eval", "tiny-albef", "--source", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    return err


FUSED = ("--protocol", "co-attack", "--attacked-embedding", "multimodal", "--reference-bugs")


@pytest.mark.parametrize("attacks, candidates", [
    ("clean,bert-attack", "wordnet"), ("clean,synonym", "wordnet"), ("clean,synonym", "mlm"), ("clean,sep", "wordnet"),
    ("clean,co-attack", "wordnet")])
def test_reference_bugs_with_a_fused_text_attack_is_accepted(tmp_path, capsys, attacks, candidates):
    err = _eval_refusal(tmp_path, capsys, *FUSED, "--attacks", attacks, "--text-candidates", candidates)
    assert "missing" in err and "reference-bugs" not in err


def test_reference_bugs_refusal_on_a_fused_embedding_suggests_only_fused_attacks(tmp_path, capsys):
    err = _eval_refusal(tmp_path, capsys, *FUSED, "--attacks", "clean,pgd", "--text-candidates", "wordnet")
    suggested = err.split("--reference-bugs (")[1].split(")")[0].split(", ")
    assert suggested == ["bert-attack", "synonym", "sep", "co-attack"]


def test_fused_readers_of_reference_bugs_are_the_attacks_whose_params_it_changes():
    """The readers `train eval` names are exactly the fused attacks `--reference-bugs` changes."""
    from models import load_model
    from train.attacks import build_attack
    from train.attacks.settings import FUSED_ATTACKS
    from train.commands_eval import attack_option_readers

    albef = load_model("tiny-albef")
    options = dict(protocol="co-attack", attacked_embedding="multimodal", candidates="wordnet")
    changed = tuple(name for name in FUSED_ATTACKS[1:]
                    if build_attack(name, albef, reference_bugs=True, **options).params()
                    != build_attack(name, albef, **options).params())
    assert changed == ("bert-attack", "synonym", "sep", "co-attack")
    readers = attack_option_readers("retrieval", "co-attack", "wordnet", "multimodal")["reference_bugs"]
    assert readers == changed


# item 5: an unknown attack is one line


def test_unknown_attack_is_one_line_before_the_source_is_read(tmp_path, capsys):
    from train.cli import main

    code = main(["eval", "tiny-clip", "--source", str(tmp_path / "missing"), "--out", str(tmp_path / "o"),
                 "--attacks", "pgd,foo"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: --attacks: unknown attack 'foo' (choose from clean, pgd, ")
    assert "\n" not in err and "missing" not in err and not (tmp_path / "o").exists()


# a later review: grounding and captioning reports made up transfer tables; the study report's chance sentence


def test_transfer_tables_leave_out_reports_without_retrieval_numbers():
    from analysis.cli import transfer_tables

    white_box = {"victim": {"name": "tiny-clip"}, "attacker": {"name": "tiny-clip"},
                 "attacks": {"clean": {"tr@1": 80.0, "ir@1": 70.0}, "pgd": {"tr@1": 10.0, "ir@1": 0.0}}}
    grounding = {"task": "grounding", "model": {"name": "tiny-albef"}, "attacks": GROUNDING["attacks"]}
    assert transfer_tables([("w", white_box), ("g", grounding)]) == ""  # one retrieval model: no transfer table
    transfer = {**white_box, "attacker": {"name": "tiny-siglip"}}
    table = transfer_tables([("w", white_box), ("t", transfer), ("g", grounding)])
    assert "| source \\ target | tiny-clip |" in table and "tiny-albef" not in table and "?" not in table


@pytest.mark.parametrize("limit, per_image, images, expected", [
    (None, None, 25, "test split, 25 images x all their captions"),
    (100, 2, 25, "test split, 25 images x 2 captions"),
    (None, 2, None, "test split, every image x 2 captions"),
])
def test_the_study_report_says_the_gallery_evaluated_and_its_chance(limit, per_image, images, expected):
    """eval.limit null (every image) crashed the report after every run had trained; chance was one in the limit."""
    from analysis.config import load_study_config
    from analysis.report import _introduction

    config = load_study_config("default", {})
    config["eval"].update(limit=limit, captions_per_image=per_image, split="test")
    text = "\n".join(_introduction(config, "sga", True, images))
    assert expected in text
    assert ("Chance is 4.0% for TR@1." in text) == (images == 25)
