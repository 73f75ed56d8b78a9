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
    """One protocol's choice for each item where the reference codes and the project differ."""

    caption_preprocess: str  # "none" (captions as given) or "pre_caption" (lower case, no punctuation)
    mlm_reading: str  # "project" (words, punctuation apart, case kept) or "reference" (ReferenceMLMSubstitutes)
    importance: str  # word importance: "cosine" (1 - cos) or "kl" (KL of softmaxed embeddings)
    text_guide: str | None  # BERT-Attack / Sep / Co-Attack candidates: None = the `guide` setting, or "text-kl"
    sga_first_guide: str  # SGA's first text step: "views" (image + resized copies) or "clean" (image only)
    sga_views: str  # SGA's resized copies: "clamped" (torch, clamped back) or "torchvision" (Resize, unclamped)
    pgd: str  # PGD and Sep's image part: "pair" (against the captions, project/SGA code) or "image-kl" (Co-Attack code)
    pgd_schedule: str  # "settings" (step_size, start in [-eps, eps]) or "co-attack" (eps/steps x 1.25, start in [0, eps])
    co_attack: str  # "per-image" (once per image, all its captions, cosine) or "per-pair" (Co-Attack code: KL, last copy)
    max_length: int | None  # MLM tokens read when not set explicitly (None: the setting's default)


PROTOCOL_CHOICES = {
    "project": ProtocolChoices(
        caption_preprocess="none", mlm_reading="project", importance="cosine", text_guide=None,
        sga_first_guide="views", sga_views="clamped", pgd="pair", pgd_schedule="settings", co_attack="per-image",
        max_length=None,
    ),
    # SGA's eval scripts: its TextAttacker reads 77 MLM tokens for CLIP; PGD = its ImageAttacker without scales
    "sga": ProtocolChoices(
        caption_preprocess="pre_caption", mlm_reading="reference", importance="kl", text_guide="text-kl",
        sga_first_guide="clean", sga_views="torchvision", pgd="pair", pgd_schedule="settings", co_attack="per-pair",
        max_length=77,
    ),
    # Co-Attack's RetrievalCLIPEval.py: run_trades (unsupervised) for PGD and Sep, BertAttack with 30 tokens
    "co-attack": ProtocolChoices(
        caption_preprocess="pre_caption", mlm_reading="reference", importance="kl", text_guide="text-kl",
        sga_first_guide="clean", sga_views="torchvision", pgd="image-kl", pgd_schedule="co-attack", co_attack="per-pair",
        max_length=30,
    ),
}
