"""Guards found by the mutation audit of the attacks and the evaluation metrics (audit BS): each test
kills a plausible bug in `train.attacks` or the evaluation's metrics that no other test caught.

Every expected value is computed here, by hand or by a plain formula, not by the code under test.
"""
from __future__ import annotations

import pytest
import torch


# ----------------------------------------------------------------------------- retrieval metrics


def _own_caption_at_ranks(ranks: dict[int, int], size: int = 12) -> torch.Tensor:
    """[size, size] scores where image i's own caption i has exactly `ranks[i]` wrong captions above it
    (other images: their own caption first)."""
    sims = torch.eye(size)
    for image, rank in ranks.items():
        sims[image, image] = 0.5
        above = [t for t in range(size) if t != image][:rank]
        sims[image, above] = 0.9
    return sims


def test_a_query_ranked_exactly_k_misses_recall_at_k():
    """Guards R@K's bound: a 0-based rank of K is the (K+1)-th place, a miss at K (`rank < K`, not `<=`)."""
    from train.metrics import retrieval_metrics, text_retrieval_ranks

    sims = _own_caption_at_ranks({0: 1, 1: 5, 2: 10})
    pairing = torch.arange(12)
    assert text_retrieval_ranks(sims, pairing).tolist()[:4] == [1, 5, 10, 0]
    text_side = retrieval_metrics(sims, pairing)
    assert text_side["tr@1"] == pytest.approx(100 * 9 / 12)  # ranks 1, 5 and 10 miss at 1
    assert text_side["tr@5"] == pytest.approx(100 * 10 / 12)  # rank 1 hits; 5 and 10 miss
    assert text_side["tr@10"] == pytest.approx(100 * 11 / 12)  # rank 10 misses
    # the transposed matrix puts caption t's image at the same ranks
    image_side = retrieval_metrics(sims.T, pairing)
    assert [image_side[f"ir@{k}"] for k in (1, 5, 10)] == pytest.approx([100 * 9 / 12, 100 * 10 / 12, 100 * 11 / 12])


# ----------------------------------------------------------------------------- PGD


def _recording_loss(direction: float, seen: list):
    """A loss whose gradient is `direction` on every pixel; it keeps every input it is called on."""
    def loss(adv):
        seen.append(adv.detach().clone())
        return direction * adv.sum()
    return loss


def test_pgd_steps_stay_inside_the_pixel_range_not_only_the_returned_images():
    """Guards PGD's projection: delta within [max(-eps, -x), min(eps, 1 - x)] at every step, so the loss
    never sees a pixel outside [0, 1] (an eps-ball-only clamp left delta at -eps under a black pixel;
    the final clamp hid it from the output, not from the model's forward passes)."""
    from train.attacks.pgd import pgd_linf

    images = torch.tensor([0.0, 0.01, 0.5, 0.99, 1.0]).view(1, 1, 1, 5)
    eps = 0.1
    for direction in (-1.0, 1.0):  # pushed down towards 0, then up towards 1
        seen = []
        out = pgd_linf(images, _recording_loss(direction, seen), eps, 4, eps / 2, random_start=False)
        assert len(seen) == 4
        assert all(float(x.min()) >= 0.0 and float(x.max()) <= 1.0 for x in seen)
        expected = (images + direction * eps).clamp(0, 1)  # two steps of eps / 2 reach the ball's edge
        assert torch.allclose(out, expected, atol=1e-6)


def test_pgd_with_zero_steps_returns_the_clean_images_without_a_random_start():
    """Guards the switch-off: `--pgd-steps 0` (or eps 0) is no attack, not a random start left in place."""
    from train.attacks.pgd import pgd_linf

    images = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    calls = []
    for eps, steps in ((8 / 255, 0), (0.0, 3)):
        out = pgd_linf(images, _recording_loss(1.0, calls), eps, steps, 1 / 255,
                       generator=torch.Generator().manual_seed(1))
        assert torch.equal(out, images)
    assert calls == []  # the loss is not even evaluated


# ----------------------------------------------------------------------------- a retrieval report entry


class _RecordingRanker:
    """`evaluate.Ranker`'s interface: plain ITC hits, keeping the pixels and captions each ranking was given."""

    def __init__(self, pairing):
        self.pairing, self.calls = pairing, []

    def hits(self, image_emb, text_emb, pixel_batches, texts):
        from train.metrics import retrieval_hits

        self.calls.append((pixel_batches, list(texts)))
        return retrieval_hits(image_emb @ text_emb.T, self.pairing)


def test_a_report_entry_ranks_the_attacked_pixels_and_counts_only_changed_captions():
    """Guards `_summarise`: re-ranking reads the ADVERSARIAL pixels of an attack that changed images; only
    changed captions count as changed or judged; only a caption the checker calls false is put back
    (one it could not judge stays attacked)."""
    import types

    from train.evaluate import AttackRecord, CleanGallery, _summarise
    from train.metrics import retrieval_hits

    pairing = torch.arange(4)
    clean_texts, attacked_texts = ["c0", "c1", "c2", "c3"], ["a0", "a1", "a2", "c3"]

    def clean_pixels():
        return iter(())

    def adversarial_pixels():
        return iter(())

    clean = CleanGallery(torch.eye(4), torch.eye(4), clean_pixels, clean_texts,
                         retrieval_hits(torch.eye(4), pairing))
    attack = types.SimpleNamespace(modality="multimodal", params=lambda: {})
    record = AttackRecord(attack, image_emb=[torch.eye(4)], text_emb=[torch.eye(4).roll(1, dims=0)],
                          texts=attacked_texts, words_changed=[1, 1, 1, 0], checker_verdicts=[False, None, True, None])
    ranker = _RecordingRanker(pairing)
    entry = _summarise(record, clean, ranker, True, adversarial_pixels)
    assert [pixels for pixels, _ in ranker.calls] == [adversarial_pixels, adversarial_pixels]
    assert ranker.calls[1][1] == ["c0", "a1", "a2", "c3"]  # only the caption judged false is put back
    assert entry["captions_changed_pct"] == 75.0 and entry["words_changed_max"] == 1
    assert entry["meaning_preserved"] == {"changed_captions": 3, "judged": 2, "true": 1, "true_pct": 50.0}


# ----------------------------------------------------------------------------- Sep-Attack and Co-Attack


def _multimodal_batch():
    from tests.test_mutation_guards import _batch, _TextStub, _Victim

    return _Victim(), _TextStub, _batch()


class _BrighteningImage:
    """An image part whose attacked images are the clean ones brightened (and whose loss it evaluates there)."""

    generator, loss = None, "pair"

    def __init__(self):
        self.losses = []

    def perturb(self, images, text_emb, pairing):
        return (images + 0.2).clamp(0, 1)

    def run(self, images, loss_fn):
        adversarial = (images + 0.2).clamp(0, 1)
        with torch.no_grad():
            self.losses.append(float(loss_fn(adversarial)))
        return adversarial


def test_co_attack_away_term_sums_over_images_at_an_attacked_image():
    """Guards Co-Attack's first term away from the clean image: summed over the batch's images, as the
    caption term is summed over pairs (a mean weighed it 1/images against alpha x the pair sum)."""
    from train.attacks.multimodal import CoAttack

    victim, text_stub, (images, texts, pairing) = _multimodal_batch()
    image_attack = _BrighteningImage()
    CoAttack(victim, image_attack=image_attack, text_attack=text_stub(change=False), alpha=3.0)(images, texts, pairing)
    adversarial = victim.encode_image((images + 0.2).clamp(0, 1))
    away = (1 - (adversarial * victim.encode_image(images)).sum(-1)).sum()
    pair_cosines = (adversarial[pairing] * victim.encode_text(texts)).sum(-1)
    assert float(away) > 1e-3  # the brightened images moved: the first term counts
    assert image_attack.losses[0] == pytest.approx(float(away - 3.0 * pair_cosines.sum()), rel=1e-5)


# ----------------------------------------------------------------------------- a grounding report entry


def _grounding_run(**fields):
    from train.evaluate_grounding import _GroundingRun

    run = _GroundingRun.__new__(_GroundingRun)
    run.multi, run.splits, run.expression_checker = [], None, (lambda *args: None)
    run.__dict__.update(fields)
    return run


def test_a_grounding_entry_keeps_the_largest_linf_and_rates_the_checked_hits_apart():
    """Guards the grounding report: linf is the largest over the batches (not the last batch's), and
    `asr_meaning_preserved` reads the hits with rejected expressions grounded unattacked."""
    import types

    from train.evaluate_grounding import _Tally

    tally = _Tally(4)
    common = {"words_changed": [1, 1], "seconds": 1.0}
    tally.add([0, 1], {"hits": [False, False], "kept_hits": [True, False], "verdicts": [False, True],
                       "linf": 0.3, **common})
    tally.add([2, 3], {"hits": [False, True], "kept_hits": [False, True], "verdicts": [None, True],
                       "linf": 0.1, **common})
    attack = types.SimpleNamespace(modality="multimodal", params=lambda: {})
    entry = _grounding_run().report_entry("sep", attack, tally, clean_hits=[True, True, True, True])
    assert entry["linf"] == 0.3
    assert entry["asr"] == 75.0  # 3 of the 4 clean hits broken
    assert entry["asr_meaning_preserved"] == 50.0  # expression 0, judged false, counts as not attacked
    assert entry["meaning_preserved"] == {"true": 2, "false": 1, "unknown": 1}


def test_only_an_expression_judged_false_is_grounded_again_unattacked():
    """Guards `hits_with_rejected_unattacked`: an expression the checker could not judge (None) keeps its
    attacked hit; only one judged false is grounded again with its clean text."""
    regrounded = []
    run = _grounding_run(texts=["clean 0", "clean 1", "clean 2"])
    run.hits_of = lambda pixels, texts, ids: regrounded.append((texts, ids)) or [True] * len(ids)
    kept = run.hits_with_rejected_unattacked([False, False, False], [False, None, True], torch.zeros(3, 1), [0, 1, 2])
    assert kept == [True, False, False]
    assert regrounded == [(["clean 0"], [0])]


class _GuideRecordingText:
    """A text part that changes nothing and keeps the image embeddings it is guided by."""

    budget, text_batch, needs_image, loss = 1, 8, True, "pair"

    def __init__(self):
        self.guides = []

    def prepare(self, texts):
        return None

    def perturb(self, texts, guide, pairing, prepared=None):
        self.guides.append(guide.clone())
        return list(texts), [[] for _ in texts]


def test_sep_attack_guides_its_text_part_by_the_clean_images():
    """Guards Sep-Attack's independence: its text part scores captions against the CLEAN images, not the
    image part's adversarial ones (that is SGA's third step, a stronger attack than Sep reports)."""
    from train.attacks.multimodal import SepAttack

    victim, _, (images, texts, pairing) = _multimodal_batch()
    text_attack = _GuideRecordingText()
    result = SepAttack(victim, image_attack=_BrighteningImage(), text_attack=text_attack)(images, texts, pairing)
    assert not torch.equal(result.images, images)
    (guide,) = text_attack.guides
    assert torch.allclose(guide, victim.encode_image(images), atol=1e-6)


# ----------------------------------------------------------------------------- audit BV: the rows BS left un-run


def test_itm_reranked_hits_read_each_query_side_from_its_own_matrix(monkeypatch):
    """Guards `Ranker.hits` under re-ranking: image queries (tr@K) rank `rerank_scores`' i2t matrix and
    caption queries (ir@K) its t2i one; here they disagree, so reading one matrix for both shows."""
    import types

    import tasks.retrieval
    from train.evaluate import Ranker

    i2t = torch.eye(3)  # every image query finds its own caption first
    t2i = torch.eye(3).roll(1, dims=0)  # every caption query finds another image first
    monkeypatch.setattr(tasks.retrieval, "rerank_scores", lambda *args, **kwargs: (i2t, t2i))
    ranker = Ranker(types.SimpleNamespace(has_itm=True), rerank_k=2, image_of_text=torch.arange(3), batch_size=3)
    hits = ranker.hits(torch.eye(3), torch.eye(3), lambda: iter(()), ["c0", "c1", "c2"])
    assert hits["tr@1"].tolist() == [True, True, True]
    assert hits["ir@1"].tolist() == [False, False, False]


def test_a_captioning_record_keeps_the_largest_linf_of_its_batches():
    """Guards `evaluate_captioning._Record.extend`: the report's linf is the largest over the batches,
    not the last batch's (a smaller last batch hid a budget overrun earlier on)."""
    from train.evaluate_captioning import _Record

    def batch(linf: float) -> dict:
        return {**{key: [] for key in _Record.FIELDS}, "linf": linf, "seconds": 1.0}

    record = _Record(None)
    record.extend(batch(0.03))
    record.extend(batch(0.01))
    assert record.linf == 0.03 and record.seconds == 2.0


def test_the_projects_hand_over_clamps_a_resize_overshoot_to_the_pixel_range():
    """Guards `to_victim_resolution`: bicubic overshoots a sharp edge below 0 and above 1; the project's
    hand-over clamps it back (only the SGA scripts' CLIP hand-over keeps the overshoot)."""
    import torch.nn.functional as F

    from train.eval_common import to_victim_resolution

    edge = torch.zeros(1, 3, 8, 8)
    edge[..., 4:] = 1
    resized = F.interpolate(edge, size=(12, 12), mode="bicubic", align_corners=False, antialias=True)
    assert float(resized.min()) < 0 and float(resized.max()) > 1  # the overshoot this test needs
    assert torch.equal(to_victim_resolution(edge, 12), resized.clamp(0, 1))


def test_grounding_text_attack_tries_the_word_whose_masking_lowers_the_score_most_first():
    """Guards `GroundingTextAttack.perturb`'s importance: masking "ball" lowers the expression's score
    more than masking "red", so with a budget of one word "ball" is replaced, though either change
    lowers the score (the importance negated tried "red" first and kept it)."""
    import types

    from tests.test_attacks import FixedSubstitutes
    from train.attacks.grounding import GroundingTextAttack

    victim = types.SimpleNamespace(objective="heat", device="cpu", text_batch=8)
    attack = GroundingTextAttack(victim, FixedSubstitutes({"red": ["xa"], "ball": ["xb"]}), budget=1)

    def scores(guides, texts, owners, target, features):  # "ball" carries most of the score
        return torch.tensor([1.0 - 0.1 * ("red" not in t.split()) - 0.5 * ("ball" not in t.split()) for t in texts])

    attack._guided_scores = scores
    attacked, changes = attack.perturb([torch.zeros(1, 3, 4, 4)], ["red ball"], target=None)
    assert attacked == ["red xb"] and changes == [[{"position": 1, "from": "ball", "to": "xb"}]]


def test_grounding_sga_guides_its_text_step_by_the_image_and_every_scaled_view():
    """Guards `GroundingSGA.run`'s step (1): the text attack scores against the image and one resized
    view per scale, as SGA's set-level guidance does (the image alone made it a plain BERT-Attack)."""
    import types

    from train.attacks.grounding import GroundingSGA

    guides = []

    def text_perturb(views, texts, target):
        guides.append([tuple(view.shape) for view in views])
        return list(texts), [[] for _ in texts]

    text = types.SimpleNamespace(perturb=text_perturb, params=lambda: {})
    image = types.SimpleNamespace(generator=None, perturb=lambda images, loss: images, params=lambda: {})
    victim = types.SimpleNamespace(objective="heat", device="cpu")
    GroundingSGA(victim, image, text, scales=(0.5, 0.75))(torch.rand(1, 3, 8, 8), ["a red ball"])
    assert guides[0] == [(1, 3, 8, 8)] * 3  # step (1); a later step reads the adversarial image alone
