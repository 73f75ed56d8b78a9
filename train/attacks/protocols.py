"""What each protocol chooses, item by item (README "Protocols" tables every line with its reason).

`PROTOCOL_CHOICES[protocol]` is read by `train.attacks.build_attack`; every field is one
departure of the project from a reference code, and tests/test_protocols.py checks each on a
hand-made case.
"""
from __future__ import annotations

from dataclasses import dataclass

# The word list both reference codes never replace and never accept as a substitute (BERT-Attack's
# `filter_words`, Li et al. 2020, reused by Co-Attack and SGA); data, kept verbatim so reference
# protocols skip exactly the words the papers' numbers skipped. Note "a the" (two words) is in it.
REFERENCE_FILTER_WORDS = frozenset("""
a about above across after afterwards again against ain all almost alone along already also
although am among amongst an and another any anyhow anyone anything anyway anywhere are aren
aren't around as at b back been before beforehand behind being below beside besides between
beyond both but by can cannot could couldn couldn't d didn didn't doesn doesn't don don't down
due during either else elsewhere empty enough even ever everyone everything everywhere except
first for former formerly from hadn hadn't hasn hasn't haven haven't he hence her here hereafter
hereby herein hereupon hers herself him himself his how however hundred i if in indeed into is
isn isn't it it's its itself just latter latterly least ll may me meanwhile mightn mightn't mine
more moreover most mostly must mustn mustn't my myself namely needn needn't neither never
nevertheless next no nobody none noone nor not nothing now nowhere o of off on once one only
onto or other others otherwise our ours ourselves out over per please s same shan shan't she
she's should've shouldn shouldn't some somehow something sometime somewhere such t than that
that'll the their theirs them themselves then thence there thereafter thereby therefore therein
thereupon these they this those through throughout thru thus to too toward towards under unless
until up upon used ve was wasn wasn't we were weren weren't what whatever when whence whenever
where whereafter whereas whereby wherein whereupon wherever whether which while whither who
whoever whole whom whose why with within without won won't would wouldn wouldn't y yet you you'd
you'll you're you've your yours yourself yourselves
! " % & ( ) * + , - . / : ; < = > ? @ ^ | · ～
""".split()) | {"a the"}


@dataclass(frozen=True)
class ProtocolChoices:
    """One protocol's choice for each item where the reference codes and the project differ (which
    code's image step an attack runs also depends on the attack: `co_attack_schedule`,
    `sga_image_attacker`, `reference_max_length` below)."""

    caption_preprocess: str  # "none" (captions as given) or "pre_caption" (lower case, no punctuation); never
    # "blip_pre_caption" (BLIP's, `--caption-preprocess` only: neither reference attack code uses it)
    mlm_reading: str  # "project" (words, punctuation apart, case kept) or "reference" (ReferenceMLMSubstitutes)
    importance: str  # word importance: "cosine" (1 - cos) or "kl" (KL of softmaxed embeddings)
    text_guide: str | None  # BERT-Attack / Sep / Co-Attack candidates: None = the `guide` setting, or "text-kl"
    sga_first_guide: str  # SGA's first text step: "views" (image + resized copies) or "clean" (image only)
    sga_views: str  # SGA's resized copies: "clamped" (clamped back) or "reference" (no antialiasing, unclamped)
    pgd: str  # PGD and Sep's image part: "pair" (against the captions, project/SGA code) or "image-kl" (Co-Attack code)
    co_attack: str  # "per-image" (once per image, all its captions, cosine) or "per-pair" (Co-Attack code: KL, last copy)
    # transfer mode, adversarial images to the victim: "project" (float, resized antialiased and clamped
    # when the resolution differs) or "sga-scripts" (the SGA transfer scripts' `t_test_transform`)
    transfer_hand_over: str


PROTOCOL_CHOICES = {
    "project": ProtocolChoices(
        caption_preprocess="none", mlm_reading="project", importance="cosine", text_guide=None,
        sga_first_guide="views", sga_views="clamped", pgd="pair", co_attack="per-image",
        transfer_hand_over="project",
    ),
    # SGA's eval scripts: PGD = its ImageAttacker without scales, BERT-Attack its TextAttacker.attack
    "sga": ProtocolChoices(
        caption_preprocess="pre_caption", mlm_reading="reference", importance="kl", text_guide="text-kl",
        sga_first_guide="clean", sga_views="reference", pgd="pair", co_attack="per-pair",
        transfer_hand_over="sga-scripts",
    ),
    # Co-Attack's RetrievalCLIPEval.py: run_trades (unsupervised) for PGD and Sep, its BertAttack
    "co-attack": ProtocolChoices(
        caption_preprocess="pre_caption", mlm_reading="reference", importance="kl", text_guide="text-kl",
        sga_first_guide="clean", sga_views="reference", pgd="image-kl", co_attack="per-pair",
        transfer_hand_over="project",  # the Co-Attack code evaluates white-box only
    ),
}

# the families the SGA code's CLIP scripts attack (its ALBEF/TCL scripts read 30 MLM tokens)
CLIP_FAMILIES = ("open_clip", "hf_clip")
# the family the Co-Attack code's ALBEF/TCL scripts attack, reading its encoders' [CLS] states
CLS_STATE_FAMILIES = ("albef",)


def follows_sga_code(protocol: str, attack: str) -> bool:
    """Whether `attack` under a reference `protocol` is the SGA code's (else the Co-Attack code's): SGA
    itself in both, and under `sga` the attacks its code builds from its own attackers (PGD, BERT-Attack, Sep)."""
    return attack == "sga" or (protocol == "sga" and attack in ("pgd", "bert-attack", "synonym", "sep"))


def reference_max_length(protocol: str, attack: str | None, family: str | None) -> int | None:
    """MLM tokens a reference protocol's text attack reads when `max_length` is not given (None under
    `project`: the setting's default). Per attack, as each code reads them: the Co-Attack code's
    BertAttack its default 30 (its scripts never pass one); the SGA code's TextAttacker 77 in the
    scripts that attack a CLIP, 30 in those that attack ALBEF or TCL."""
    if protocol == "project" or attack is None:
        return None
    if follows_sga_code(protocol, attack):
        return 77 if family in CLIP_FAMILIES else 30
    return 30


def co_attack_schedule(protocol: str, attack: str) -> bool:
    """Whether `attack`'s image step runs the Co-Attack code's schedule (step eps / steps x 1.25, start
    in [0, eps]), which sets the step itself: Co-Attack under either reference protocol, and PGD and
    Sep's image part under `co-attack`."""
    return protocol != "project" and (attack == "co-attack" or (protocol == "co-attack" and attack in ("pgd", "sep")))


def sga_image_attacker(protocol: str, attack: str) -> bool:
    """Whether `attack`'s image step is the SGA code's ImageAttacker under a reference `protocol`
    (whose gradient scaling is a reference bug): SGA's, and PGD's and Sep's under `sga`."""
    return protocol != "project" and attack in ("pgd", "sep", "sga") and follows_sga_code(protocol, attack)


def reads_cls_states(protocol: str, attack: str, family: str | None) -> bool:
    """Whether `attack` under a reference `protocol` reads a victim of `family` as the Co-Attack code
    reads ALBEF and TCL (its README's `--cls` commands): the encoders' [CLS] outputs before the ITC
    projection (`train.attacks.unprojected`). Every attack of that code, on the ALBEF family; the
    SGA code's attacks read the ITC embeddings."""
    return protocol != "project" and family in CLS_STATE_FAMILIES and not follows_sga_code(protocol, attack)
