"""`train eval`'s attack options: one builder for retrieval and grounding, and the grounding report's
procedure taken from the protocol its evaluation decided."""
from __future__ import annotations

from types import SimpleNamespace

import pytest


class _Reached(Exception):
    """The evaluation was called: its attack options are captured and nothing is attacked."""


# every shared attack option given a value other than its default, so a task dropping one shows
_SET_EVERY_OPTION = ["--attack-eps", "4/255", "--pgd-steps", "3", "--text-candidates", "mlm", "--top-k", "4",
                     "--word-budget", "2", "--max-length", "20", "--co-alpha", "2", "--text-batch", "64"]


@pytest.mark.parametrize("protocol_arguments", [
    ["--pgd-step-size", "1/255"],  # named: the project protocol's grounding otherwise records the default step
    ["--protocol", "co-attack", "--reference-bugs"],
    ["--protocol", "co-attack", "--attacked-embedding", "multimodal"],
], ids=["project", "co-attack-bugs", "co-attack-fused"])
def test_retrieval_and_grounding_evaluate_with_the_same_attack_options(grounding_world_dir, tmp_path, monkeypatch,
                                                                        protocol_arguments):
    """The same command line gives both tasks' evaluations the same attack options; grounding's only
    difference is its own: under the project protocol its grounding objective, and no protocol recorded."""
    import train.evaluate
    import train.evaluate_grounding
    from train.cli import main as train_main

    reached: dict[str, dict] = {}

    def evaluation(task: str):
        def capture(*args, attack_options, **kwargs):
            reached[task] = dict(attack_options)
            raise _Reached
        return capture

    monkeypatch.setattr(train.evaluate, "evaluate", evaluation("retrieval"))
    monkeypatch.setattr(train.evaluate_grounding, "evaluate_grounding", evaluation("grounding"))
    fused = "--attacked-embedding" in protocol_arguments
    attacks = ["clean", "pgd", "bert-attack", "sep", "co-attack"]
    # SGA has no fused-embedding attack: it runs, and its scales are set, only with unimodal embeddings
    sga = [] if fused else ["--sga-scales", "0.5,1.5"]
    attacks += ["sga"] if sga else []
    for task in ("retrieval", "grounding"):
        with pytest.raises(_Reached):
            train_main(["eval", "tiny-albef", "--task", task, "--source", str(grounding_world_dir), "--split", "test",
                        "--limit", "2", "--attacks", ",".join(attacks), *_SET_EVERY_OPTION, *sga, *protocol_arguments,
                        "--out", str(tmp_path / task), "--no-progress"])
    retrieval, grounding = reached["retrieval"], reached["grounding"]
    if "--protocol" not in protocol_arguments:
        assert grounding.pop("objective") == "itm"
        assert (retrieval.pop("protocol"), retrieval.pop("reference_bugs")) == ("project", False)
    assert retrieval == grounding
    assert retrieval["eps"] == pytest.approx(4 / 255) and retrieval["text_batch"] == 64
    assert retrieval.get("attacked_embedding") == ("multimodal" if fused else None)


@pytest.mark.parametrize("protocol, words", [("project", "share of the Grad-CAM heat on the true box"),
                                             ("co-attack", "Co-Attack's grounding code")])
def test_grounding_report_head_describes_the_protocol_it_is_given(protocol, words):
    """The procedure follows the `protocol` argument, not a protocol worked out again from the options
    (these name none)."""
    from augment.referring import world_grounding
    from train.evaluate_grounding import _GroundingRun

    data = world_grounding(seed=4, n=2)
    model = SimpleNamespace(describe=lambda: {"name": "stub", "family": "stub"}, device="cpu")
    run = _GroundingRun.over(data, [e.text for e in data.expressions], model, model, False, batch_size=2,
                             ground_batch=8, expression_checker=None, seed=0, decoding=None)
    head = run.report_head({}, {"objective": "heat"}, protocol, "fp32", "none")
    assert words in head["procedure"]
    assert head["settings"]["attack_options"] == {"objective": "heat"}
    assert head["settings"]["device"] == "cpu"  # where it ran, as every report says since 2026-12-06



def test_grounding_settings_line_names_the_project_protocol_its_options_leave_out():
    """Grounding's project options carry no protocol (its eval.json never had one); eval.md's settings
    line still says which protocol ran, as retrieval's does."""
    from train.eval_report import settings_markdown

    def line(task: str, options: dict) -> str:
        report = {"task": task, "settings": {"attack_options": options, "seed": 0}, "attacks": {}}
        return settings_markdown(report)[1]

    assert line("grounding", {"objective": "heat"}).startswith("Settings: attack protocol `project`; ")
    assert line("grounding", {"protocol": "co-attack"}).startswith("Settings: attack protocol `co-attack`; ")
    assert "protocol" not in line("captioning", {})  # a task without protocols says none
