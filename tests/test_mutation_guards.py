"""Guards found by a hand mutation audit: each test kills a plausible bug that no other test caught.

Every expected value is computed here, by hand or by a plain formula, not by the code under test.
"""
from __future__ import annotations

import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F


# ----------------------------------------------------------------------------- retrieval re-ranking


class _Tokens:
    def __init__(self, ids):
        self.input_ids = ids

    def __getitem__(self, index):
        return _Tokens(self.input_ids[index])


def test_rerank_floor_puts_every_itc_only_candidate_below_the_reranked_ones():
    """Guards the ITC floor's sign: unranked candidates at `itc - top + lowest - 1`, not above the re-ranked top k."""
    from tasks.retrieval import rerank_scores

    fake = types.SimpleNamespace(device="cpu", tokenize=lambda texts: _Tokens(torch.arange(len(texts))),
                                 image_features=lambda pixels: pixels.flatten(1)[:, :1],
                                 itm_logits=lambda features, tokens: torch.zeros(len(features)))
    sims = torch.tensor([[0.9, 0.8, 0.1], [0.2, 0.3, 0.95]])
    i2t, _ = rerank_scores(fake, sims, torch.zeros(2, 3, 2, 2), ["a", "b", "c"], k=1)
    top, lowest = 0.95, 0.0  # the largest ITC score; the lowest re-ranked score (every logit is 0)
    expected = torch.tensor([[0.0, 0.8 - top + lowest - 1, 0.1 - top + lowest - 1],
                             [0.2 - top + lowest - 1, 0.3 - top + lowest - 1, 0.0]])
    assert torch.allclose(i2t, expected, atol=1e-6)


def test_a_nan_match_logit_leaves_the_itc_floor_below_the_other_reranked_scores():
    """Guards the floor's NaN filter: a NaN ITM logit (a broken pair) ranks as a miss, and the candidates outside
    the top k still sit below the lowest finite re-ranked score in ITC order, not NaN all of them."""
    from tasks.retrieval import rerank_scores

    fake = types.SimpleNamespace(device="cpu", tokenize=lambda texts: _Tokens(torch.arange(len(texts))),
                                 image_features=lambda pixels: pixels.flatten(1)[:, :1],
                                 itm_logits=lambda features, tokens: torch.where(
                                     tokens.input_ids == 0, float("nan"), 2.0))
    sims = torch.tensor([[0.9, 0.8, 0.1], [0.2, 0.3, 0.95]])
    i2t, _ = rerank_scores(fake, sims, torch.zeros(2, 3, 2, 2), ["a", "b", "c"], k=1)
    top, lowest = 0.95, 2.0  # the largest ITC score; the lowest finite re-ranked score
    assert i2t[0, 0].isnan() and float(i2t[1, 2]) == 2.0
    floor = torch.tensor([i2t[0, 1], i2t[0, 2], i2t[1, 0], i2t[1, 1]])
    assert torch.allclose(floor, torch.tensor([0.8, 0.1, 0.2, 0.3]) - top + lowest - 1, atol=1e-6)


def test_pixel_batches_holding_more_images_than_the_similarities_are_refused_before_scoring():
    """Guards rerank_scores' in-loop count: a batch past the gallery's images is a ValueError naming the count
    before it is scored (one batch of 3 images for 2 rows of similarities was an IndexError of shapes)."""
    from tasks.retrieval import rerank_scores

    fake = types.SimpleNamespace(device="cpu", tokenize=lambda texts: _Tokens(torch.arange(len(texts))),
                                 image_features=lambda pixels: pixels.flatten(1)[:, :1],
                                 itm_logits=lambda features, tokens: torch.zeros(len(features)))
    with pytest.raises(ValueError, match="^the pixel batches hold more than the 2 images of the similarities$"):
        rerank_scores(fake, torch.rand(2, 3), torch.zeros(3, 3, 2, 2), ["a", "b", "c"], k=1, batch_size=3)


# ----------------------------------------------------------------------------- PGD


def test_pgd_symmetric_start_is_uniform_in_minus_eps_to_eps():
    """Guards the default random start: images + (2u - 1) * eps, not a one-sided u * eps."""
    from train.attacks.pgd import pgd_linf

    images, eps = torch.full((1, 3, 4, 4), 0.5), 0.1
    seen = []

    def loss(adv):
        seen.append(adv.detach().clone())
        return adv.sum() * 0

    pgd_linf(images, loss, eps, 1, eps, generator=torch.Generator().manual_seed(0))
    noise = torch.rand(images.shape, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(seen[0], 0.5 + (noise * 2 - 1) * eps, atol=1e-7)
    assert float(seen[0].min()) < 0.5 < float(seen[0].max())


# ----------------------------------------------------------------------------- SGA and Co-Attack parts


class _Victim:
    """Deterministic encoders with positive unit embeddings (so pair similarities are far from 0)."""

    device = torch.device("cpu")
    logit_scale = 1.0

    def __init__(self):
        self.weights = torch.randn(3 * 8 * 8, 4, generator=torch.Generator().manual_seed(0))
        self.image_batches = []

    def encode_image(self, pixels, normalize=True):
        self.image_batches.append(len(pixels))
        return F.normalize((pixels.flatten(1) @ self.weights).abs() + 0.1, dim=-1)

    def encode_text(self, texts, normalize=True):
        rows = [torch.rand(4, generator=torch.Generator().manual_seed(sum(map(ord, t)))) + 0.1 for t in texts]
        return F.normalize(torch.stack(rows), dim=-1)


class _TextStub:
    budget, text_batch, needs_image, loss = 1, 8, True, "pair"

    def __init__(self, change: bool = True):
        self.calls, self.change = [], change

    def prepare(self, texts):
        return None

    def perturb(self, texts, guide, pairing, prepared=None):
        self.calls.append(list(texts))
        if not self.change:
            return list(texts), [[] for _ in texts]
        return [t + " x" for t in texts], [[{"position": len(t.split()), "from": "", "to": "x"}] for t in texts]


class _ImageStub:
    generator, loss = None, "pair"

    def __init__(self):
        self.losses = []

    def run(self, images, loss_fn):
        with torch.no_grad():
            self.losses.append(float(loss_fn(images)))
        return images.clone()


def _batch():
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    return images, ["a red circle", "a circle on the left", "a blue square", "a square"], torch.tensor([0, 0, 1, 1])


def test_sga_attacks_the_original_captions_again_in_its_last_step():
    """Guards SGA step (3): it perturbs the ORIGINAL captions, not step (1)'s attacked ones (budget doubled)."""
    from train.attacks.multimodal import SGA

    images, texts, pairing = _batch()
    text_attack = _TextStub()
    SGA(_Victim(), image_attack=_ImageStub(), text_attack=text_attack, noise_std=0.0)(images, texts, pairing)
    assert text_attack.calls == [texts, texts]


def test_sga_image_loss_sums_the_pair_loss_over_the_image_and_its_views():
    """Guards SGA step (2): the loss sums over the adversarial image itself AND its resized views."""
    from train.attacks.multimodal import SGA, resized_views

    images, texts, pairing = _batch()
    victim, image_attack = _Victim(), _ImageStub()
    SGA(victim, image_attack=image_attack, text_attack=_TextStub(), noise_std=0.0, scales=(0.5, 1.5))(
        images, texts, pairing)
    captions = victim.encode_text([t + " x" for t in texts])  # step (1)'s attacked captions
    views = [images, *resized_views(images, (0.5, 1.5))]
    expected = sum(-(victim.encode_image(v)[pairing] * captions).sum(-1).mean() for v in views)
    assert image_attack.losses[0] == pytest.approx(float(expected), rel=1e-5)


def test_sga_view_noise_is_gaussian_with_zero_mean():
    """Guards the views' noise: N(0, std^2) as the SGA code adds it, not uniform [0, std) (a brightness shift)."""
    from train.attacks.multimodal import resized_views

    images = torch.full((1, 3, 64, 64), 0.5)
    (view,) = resized_views(images, (1.0,), noise_std=0.05, generator=torch.Generator().manual_seed(0))
    shift = view - 0.5
    assert abs(float(shift.mean())) < 0.003  # uniform noise would shift it by 0.025
    assert float(shift.std()) == pytest.approx(0.05, rel=0.15)


def test_co_attack_image_objective_weights_every_caption_pair_by_alpha():
    """Guards Co-Attack's per-image objective: sum(1 - cos(adv, clean)) - alpha * SUM of pair cosines (not their mean)."""
    from train.attacks.multimodal import CoAttack

    images, texts, pairing = _batch()
    victim, image_attack = _Victim(), _ImageStub()
    CoAttack(victim, image_attack=image_attack, text_attack=_TextStub(change=False), alpha=3.0)(images, texts, pairing)
    pair_cosines = (victim.encode_image(images)[pairing] * victim.encode_text(texts)).sum(-1)
    # at the clean image the first term is 0
    assert image_attack.losses[0] == pytest.approx(-3.0 * float(pair_cosines.sum()), rel=1e-5, abs=1e-5)


# ----------------------------------------------------------------------------- select


class _Pool:
    def __init__(self, rows):
        from datasets import Dataset

        self.dataset = Dataset.from_dict({k: [r[k] for r in rows] for k in rows[0]})
        self.path = "pool"

    def __len__(self):
        return len(self.dataset)


def _scored_pool(monkeypatch):
    from augment import select

    alignment = np.array([0.1, 0.9, 0.5, 0.3, 0.7])
    rows = [{"source_image_id": image, "source_caption_index": caption, "modality": "text", "method": "m"}
            for image, caption in [("a", 0), ("a", 0), ("a", 1), ("a", 1), ("b", 0)]]
    monkeypatch.setattr(select, "row_alignment", lambda pool, scorer: (alignment, {"scorer": {"id": "s"}}))
    return _Pool(rows)


def test_select_top_k_per_item_keys_items_by_image_and_caption(monkeypatch):
    """Guards the item key of --top-k-per-item / --max-per-item: (image, caption index), not the image alone."""
    from augment.select import SelectFilters, select_rows

    pool = _scored_pool(monkeypatch)
    kept, _ = select_rows(pool, SelectFilters(top_k_per_item=1))
    assert kept.tolist() == [1, 2, 4]  # best of (a, 0), of (a, 1) and of (b, 0)
    kept, _ = select_rows(pool, SelectFilters(max_per_item=1))
    assert kept.tolist() == [0, 2, 4]


def test_select_alignment_bounds_are_inclusive(monkeypatch):
    """Guards --min-alignment / --max-alignment: a row exactly at a bound is kept (>=, <=)."""
    from augment.select import SelectFilters, select_rows

    pool = _scored_pool(monkeypatch)
    assert select_rows(pool, SelectFilters(min_alignment=0.5))[0].tolist() == [1, 2, 4]
    assert select_rows(pool, SelectFilters(max_alignment=0.5))[0].tolist() == [0, 2, 3]


def test_max_per_item_keeps_the_first_rows_in_pool_order_beside_a_score_filter(monkeypatch):
    """Guards --max-per-item's order: the first rows of an item in pool order even when the scores are read for
    another filter (ranked by alignment there, it did --top-k-per-item's job)."""
    from augment.select import SelectFilters, select_rows

    pool = _scored_pool(monkeypatch)
    assert select_rows(pool, SelectFilters(min_alignment=0.0, max_per_item=1))[0].tolist() == [0, 2, 4]


def test_a_resumed_pool_records_this_runs_provenance_and_its_first_creation_time(tmp_path):
    """Guards resumed_meta's merge order, the old pool.json then this run's: the other way round a resume kept
    the old run's package versions, shard inputs and (where shards are checked one by one) source fingerprint."""
    from augment.pool import resumed_meta

    old = {"method": "eda", "seed": 0, "created": "2026-12-01T10:00:00+00:00", "package_versions": {"mat-plus": "0.1"},
           "shard_inputs": ["a", "b"], "source_fingerprint": "before"}
    now = {"method": "eda", "seed": 0, "package_versions": {"mat-plus": "0.2"}, "shard_inputs": ["a", "c"],
           "source_fingerprint": "after"}
    merged = resumed_meta(tmp_path, old, now)
    assert merged == {**now, "created": "2026-12-01T10:00:00+00:00"}


def test_a_pair_row_without_its_image_is_refused():
    """Guards check_pool_row's image rule for both modalities with a new image: checked for image rows alone, a
    pair row without its image was written."""
    from augment.schema import SchemaError, check_pool_row

    for modality in ("image", "pair"):
        with pytest.raises(SchemaError, match=f"row 3: {modality} row has no image"):
            check_pool_row({"modality": modality, "caption": "a dog", "image": None, "source_image_id": "x"}, "row 3")


def test_a_pool_column_of_another_value_type_is_refused():
    """Guards check_pool_features' dtype comparison: without it, a pool whose source_caption_index is int64
    (or a string) passed as schema v1."""
    from datasets import Value

    from augment.schema import POOL_FEATURES, SchemaError, check_pool_features

    for dtype in ("int64", "string"):
        features = POOL_FEATURES.copy()
        features["source_caption_index"] = Value(dtype)
        with pytest.raises(SchemaError, match="column 'source_caption_index' has type"):
            check_pool_features(features, "pool")
    check_pool_features(POOL_FEATURES.copy(), "pool")


def test_select_refuses_a_per_item_limit_below_one():
    """Guards the filters' check `< 1`: at `< 0`, --max-per-item 0 passed it, and with --allow-empty wrote an empty pool."""
    from augment.errors import PoolError
    from augment.select import SelectFilters

    for name in ("max_per_item", "top_k_per_item"):
        for value in (0, -1):
            with pytest.raises(PoolError, match=f"--{name.replace('_', '-')} must be at least 1, got {value}"):
                SelectFilters(**{name: value}).check()
    SelectFilters(max_per_item=1, top_k_per_item=1).check()


def test_a_selection_made_again_with_another_scorer_is_another_pool(tmp_path):
    """Guards the scorer id among a selection's identity params: without it, `augment select` with another
    --scorer (the same filters) into a selection's folder replaced it without --overwrite, as if a resume."""
    from augment.errors import PoolIdentityError
    from augment.pool import resumed_meta
    from augment.select import SelectFilters, selection_meta

    class Parent:  # what selection_meta reads of the pool selected from
        meta, path = {"method": "eda", "seed": 0}, tmp_path / "pool"

        def __len__(self):
            return 5

    parent = Parent()
    filters, out = SelectFilters(min_alignment=0.2), str(tmp_path / "picked")
    made = selection_meta(parent, out, filters, {"scorer": {"id": "tiny-clip@a"}}, 3)
    assert resumed_meta(tmp_path / "picked", made, selection_meta(parent, out, filters, {"scorer": {"id": "tiny-clip@a"}}, 3))
    with pytest.raises(PoolIdentityError, match=r"params \['scorer'\]"):
        resumed_meta(tmp_path / "picked", made, selection_meta(parent, out, filters, {"scorer": {"id": "tiny-clip@b"}}, 3))


# ----------------------------------------------------------------------------- the study's numbers


def test_r_at_1_is_the_mean_of_text_and_image_retrieval():
    """Guards the headline number: robust R@1 = (TR@1 + IR@1) / 2."""
    from analysis.report import r_at_1

    assert r_at_1({"attacks": {"sga": {"tr@1": 40.0, "ir@1": 20.0}}}, "sga") == 30.0
    assert r_at_1({"attacks": {"sga": {"tr@1_meaning_preserved": 10.0, "ir@1_meaning_preserved": 30.0}}},
                  "sga", "_meaning_preserved") == 20.0


def test_verdict_needs_a_difference_beyond_twice_the_larger_seed_spread():
    """Guards the verdict rule: |difference| > 2 x max(spread), not 1 x or the smaller spread."""
    from analysis.report import verdict

    summary = {"mat+": {"robust": (50.0, 2.0, 3)}, "mat": {"robust": (46.5, 1.0, 3)}}
    within = verdict(summary, "mat+")
    assert within["difference"] == pytest.approx(3.5) and within["spread"] == 2.0
    assert within["beyond_twice_spread"] is False  # 3.5 <= 2 x 2.0
    summary["mat+"] = {"robust": (51.0, 2.0, 3)}
    assert verdict(summary, "mat+")["beyond_twice_spread"] is True  # 4.5 > 4.0


def test_a_verdict_with_one_seed_on_either_side_is_never_beyond_the_spread():
    """Guards `n1 > 1 and n0 > 1`: one run of one seed has no spread, so results.json's verdict claims no
    difference however large (with `or`, a one-seed MAT+ run 10 points above MAT's three seeds was beyond)."""
    from analysis.report import verdict

    for ours, base in (((50.0, 0.0, 1), (40.0, 1.0, 3)), ((50.0, 1.0, 3), (40.0, 0.0, 1))):
        judged = verdict({"mat+": {"robust": ours}, "mat": {"robust": base}}, "mat+")
        assert judged["difference"] == pytest.approx(10.0) and judged["n"] == 1
        assert judged["beyond_twice_spread"] is False


def test_a_seed_with_no_paired_difference_is_neither_higher_nor_lower():
    """Guards the paired counts `d > 0` / `d < 0`: with `>=`, a seed where MAT+ equals MAT counted as higher."""
    from analysis.report import paired_difference

    results = [{"run": run, "seed": seed, "eval": {"attacks": {"sga": {"tr@1": value, "ir@1": value}}}}
               for seed, (base, ours) in enumerate([(40.0, 40.0), (40.0, 45.0), (40.0, 38.0)])
               for run, value in (("mat", base), ("mat+:a", ours))]
    paired = paired_difference(results, "mat+:a", "sga", False)
    assert paired["differences"] == [0.0, 5.0, -2.0]
    assert paired["higher"] == 1 and paired["lower"] == 1


def test_the_runs_more_samples_shares_with_the_main_comparison_stay_in_its_group():
    """Guards run_specs' first-wins `setdefault`: overwritten by the more-samples section's specs, `mat` and
    `mat+:scene` became more_samples runs, which the report's main table leaves out."""
    from analysis.study import run_specs

    config = {"methods": ["mat", "mat+"], "pools": {"scene": {}}, "more_samples": {"pool": "scene"}}
    groups = {spec.name: spec.group for spec in run_specs(config)}
    assert groups["mat"] == groups["mat+:scene"] == "main"
    assert groups["mat+expand:scene"] == groups["mat:oracle"] == "more_samples"


def test_an_expanded_pool_run_is_not_given_p_original():
    """Guards run_train_settings: --pool-mode expand reads no --p-original (the trainer refuses it there), so a
    study's train.p_original reaches sampled MAT+ runs only."""
    from analysis.config import run_train_settings

    settings = {"p_original": 0.3, "lr": 1e-4}
    assert run_train_settings(settings, pooled=True, pool_mode="expand") == {"lr": 1e-4}
    assert run_train_settings(settings, pooled=True) == settings
    assert run_train_settings(settings, pooled=False) == {"lr": 1e-4}


def test_a_study_pool_is_made_again_for_another_finetune_scenes(tmp_path, monkeypatch):
    """Guards the pool stage's cache key: without finetune_scenes in it, a pool generated from 20 fine-tuning
    scenes was kept for a config of 10 (its rows of scenes the runs no longer train on)."""
    from analysis import study
    from analysis.config import load_study_config

    generated, logged = [], []
    monkeypatch.setattr(study, "run_augment", generated.append)  # no pool written: the cache key is the point

    def pool_for(scenes: int) -> None:
        made = study.Study(load_study_config("default", {"out": str(tmp_path), "finetune_scenes": scenes}), log=logged.append)
        monkeypatch.setattr(made, "source_dir", lambda which: tmp_path / "finetune-source")
        made.pool("scene")

    pool_for(20)
    pool_for(20)
    assert len(generated) == 1  # the same config: cached
    pool_for(10)
    assert len(generated) == 2 and any("made with other finetune_scenes" in line for line in logged)


def test_pool_diversity_property_is_the_mean_vendi_score():
    """Guards the study's pool properties: diversity is the Vendi score averaged over modalities, gap the Frechet mean."""
    from analysis.report import pool_properties

    scores = {"alignment": {"all": {"mean": 0.3}},
              "diversity": {"text": {"vendi": {"mean": 2.0}, "mean_pairwise_distance": {"mean": 0.4}},
                            "image": {"vendi": {"mean": 4.0}, "mean_pairwise_distance": {"mean": 0.6}}},
              "gap": {"text": {"frechet": {"value": 1.0}}, "image": {"frechet": {"value": 3.0}}}}
    assert pool_properties(scores) == {"alignment": 0.3, "diversity": 3.0, "gap": 2.0}


# ----------------------------------------------------------------------------- grounding and captioning


def test_box_scores_clip_columns_by_width_and_rows_by_height_on_a_wide_image():
    """Guards box_scores' clipping: x by the heat map's width, y by its height (RefCOCO images are not square)."""
    from tasks.grounding import box_scores

    heat = torch.zeros(4, 8)
    heat[:, 6] = 1.0
    scores = box_scores(heat, [[5, 0, 3, 4], [0, 0, 3, 4]])
    assert scores.tolist() == pytest.approx([4 / 12 ** 0.5, 0.0])


def test_an_iou_of_exactly_one_half_is_a_hit(monkeypatch):
    """Guards the IoU threshold: IoU >= 0.5 is correct (ALBEF), in the evaluation's hits and both baselines."""
    import train.evaluate_grounding as evaluate_grounding
    from tasks.grounding import box_iou, grounding_hits, random_box_accuracy

    box, truth, far = [0, 0, 10, 10], [0, 0, 10, 20], [50, 50, 5, 5]
    assert box_iou(box, truth) == 0.5  # 100 / 200
    assert grounding_hits([box], [truth]) == [True]
    assert random_box_accuracy([[box, far]], [truth]) == 50.0
    run = evaluate_grounding._GroundingRun.__new__(evaluate_grounding._GroundingRun)
    run.model, run.candidates, run.truth, run.sizes, run.ground_batch = None, [[far, box]], [truth], [(60, 60)], 4
    monkeypatch.setattr(evaluate_grounding, "ground", lambda *args, **kwargs: [1])
    assert run.hits_of(torch.zeros(1, 3, 2, 2), ["x"], [0]) == [True]


def test_bleu4_is_the_geometric_mean_of_four_ngram_precisions():
    """Guards the reported BLEU: BLEU-4 (bleu[3]), checked against the n-gram precisions counted by hand."""
    pytest.importorskip("pycocoevalcap")
    from train.caption_metrics import caption_scores

    scores = caption_scores([["a red circle on the left"]], ["a red circle on a table"], java=False, meteor=False)
    # 1-grams 4/6, 2-grams 3/5, 3-grams 2/4, 4-grams 1/3; equal lengths: no brevity penalty
    assert scores["bleu4"] == pytest.approx(100 * (4 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25, rel=1e-6)


def test_an_empty_caption_scores_zero():
    """Guards the empty-caption stand-in: it must match no reference word (ROUGE-L and CIDEr 0)."""
    pytest.importorskip("pycocoevalcap")
    from train.caption_metrics import caption_scores

    scores = caption_scores([["a red circle"]], [""], java=False, meteor=False)
    assert scores["rouge_l"] == 0.0 and scores["per_image_cider"] == [0.0]


# ----------------------------------------------------------------------------- the trainer's loss


def test_adversarial_step_loss_is_robust_plus_clean_weight_times_clean():
    """Guards MAT/TeCoA's outer loss: robust + clean_weight * clean, the robust half being the attacked forward's."""
    from models.base import TextTokens
    from train.methods import TeCoAMethod

    cfg = types.SimpleNamespace(clean_weight=0.25, pgd_steps=0, attack_eps=0.0)

    def forward(pixels, tokens, keys, chunks=1, texts=None):  # one loss per chunk: the mean of its pixels
        return tuple(part.mean() for part in pixels.chunk(chunks))

    model = types.SimpleNamespace(tokenize=lambda texts: TextTokens(torch.zeros(len(texts), 3, dtype=torch.long)))
    ctx = types.SimpleNamespace(config=cfg, model=model, forward=forward, task=types.SimpleNamespace(gradient_scale=1.0))
    method = TeCoAMethod(ctx)
    method._pgd = lambda pixels, tokens, keys, texts: pixels + 1.0  # the "attacked" images: brighter by 1
    pixels = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    batch = types.SimpleNamespace(pixels=pixels, texts=["a", "b"], keys=torch.tensor([0, 1]))
    out = method(batch, 0)
    clean = float(pixels.mean())
    assert float(out.robust_loss) == pytest.approx(clean + 1.0) and float(out.clean_loss) == pytest.approx(clean)
    assert float(out.loss) == pytest.approx(clean + 1.0 + 0.25 * clean)


# ----------------------------------------------------------------------------- a source's image files changed since its read


def test_an_image_whose_change_time_is_ahead_of_this_clock_is_no_change(tmp_path, monkeypatch):
    """Guards `check_unchanged_since_read`'s upper bound: a change time later than now is a clock's (a file
    server's ahead of this machine), not a change after the read; one between the read and now is refused."""
    import time

    import augment.sources as sources
    from augment.errors import SourceError

    now = time.time_ns()
    monkeypatch.setattr(sources, "_SOURCES_READ_AT", {str(tmp_path): now - 60 * 10**9})  # read a minute ago
    image = str(tmp_path / "images" / "0.png")  # under the source's folder
    ahead = types.SimpleNamespace(st_ctime_ns=now + 3600 * 10**9, st_mtime_ns=now + 3600 * 10**9)
    sources.check_unchanged_since_read(image, ahead, "image file 0.png")  # the server's clock: read
    changed = types.SimpleNamespace(st_ctime_ns=now - 10**9, st_mtime_ns=now - 10**9)
    with pytest.raises(SourceError, match="^image file 0.png: the file changed at "):
        sources.check_unchanged_since_read(image, changed, "image file 0.png")


def test_a_source_read_records_the_folders_its_images_lie_in_and_no_other(tmp_path, monkeypatch):
    """Guards `note_source_read`'s folders: a source file's own folder (its images beside it), --image-root
    (images elsewhere), a source folder itself and not its parent (a sibling folder's images are no
    source's: not refused)."""
    import augment.sources as sources
    from augment.errors import SourceError

    monkeypatch.setattr(sources, "_SOURCES_READ_AT", {})
    for folder in ("captions", "pictures", "world", "elsewhere"):
        (tmp_path / folder).mkdir()
    (tmp_path / "captions" / "data.json").write_text("{}")
    sources.note_source_read(tmp_path / "captions" / "data.json", image_root=tmp_path / "pictures")
    sources.note_source_read(tmp_path / "world")
    after = max(sources._SOURCES_READ_AT.values()) + 1  # a change just after both reads
    changed = types.SimpleNamespace(st_ctime_ns=after, st_mtime_ns=after)
    for image in ("captions/images/0.png", "pictures/0.png", "world/images/0.png"):
        with pytest.raises(SourceError, match="the file changed at"):
            sources.check_unchanged_since_read(str(tmp_path / image), changed, image)
    sources.check_unchanged_since_read(str(tmp_path / "elsewhere" / "0.png"), changed, "elsewhere/0.png")


def test_a_file_replaced_by_one_of_the_same_size_and_mtime_has_another_identity(tmp_path):
    """Guards `path_identity`'s change time: a file replaced in place by one of the same size with its
    old modification time kept (`cp -p`, `rsync -t` of an edited image) is another file to the score
    cache's and resume's image fingerprints."""
    import os

    from augment.source_cache import path_identity

    image = tmp_path / "0.bmp"
    image.write_bytes(b"A" * 64)
    before = os.stat(image)
    identity = path_identity(image)
    replacement = tmp_path / ".0.bmp.new"
    replacement.write_bytes(b"B" * 64)
    os.utime(replacement, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(replacement, image)
    after = os.stat(image)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)  # what a copy keeps
    assert path_identity(image) != identity


# ----------------------------------------------------------------------------- augment push


def test_a_hub_error_never_shows_the_token_it_was_given(monkeypatch):
    """Guards `hub_errors`' own scrub of the token it holds: not every token is hf_-shaped (a private endpoint's)
    or among those the process-wide redaction read when it first looked (its list is read once)."""
    import augment.cli_common as cli_common
    from augment.hub import HubError, hub_errors

    token = "endpoint-token-7f3a9c"  # no hf_ prefix
    monkeypatch.setattr(cli_common, "_known_tokens", [])  # read before this token was set
    with pytest.raises(HubError) as raised:
        with hub_errors("uploading the data", "org/pool", token):
            raise RuntimeError(f"the endpoint refused {token}")
    assert token not in str(raised.value) and "<token>" in str(raised.value)


# ----------------------------------------------------------------------------- make demo


def test_make_demo_runs_the_demo_config_and_shows_only_the_comparison(tmp_path, monkeypatch, capsys):
    """Guards `analysis.demo`: with no argument it runs the bundled demo config (another one when named), then
    prints the report's comparison section alone and where the report, pools, runs and evaluations are."""
    import analysis.demo as demo

    report = tmp_path / "out" / "report.md"
    report.parent.mkdir()
    report.write_text("# Study\n\n## The comparison that matters\n\n| model | robust R@1 |\n|---|---|\n| mat+ | 40.0 |\n\n"
                      "Learning curves on the val split:\n\n![curves](learning_curves.png)\n\n## Clean and robust R@1\n\n"
                      "| other table |\n")
    loaded = []

    def load_study_config(name):
        loaded.append(name)
        return {"out": str(tmp_path / "out")}

    class Study:
        def __init__(self, config, log):
            log("[world] built")

        def run(self):
            return report

    monkeypatch.setattr(demo, "load_study_config", load_study_config)
    monkeypatch.setattr(demo, "Study", Study)
    assert demo.main([]) == 0 and demo.main(["mini"]) == 0
    assert loaded == ["demo", "mini"]
    shown = capsys.readouterr().out.split("demo finished in ")[-1]
    assert "| mat+ | 40.0 |" in shown and "Learning curves" not in shown and "other table" not in shown
    assert f"report: {report} (learning curves: {tmp_path / 'out' / 'learning_curves.png'})" in shown
    out = tmp_path / "out"
    assert f"pools:  {out}/pools/   runs: {out}/runs/   evaluations: {out}/evals/" in shown


# ----------------------------------------------------------------------------- model loading


def test_mixed_precision_names_load_the_weights_in_float32():
    """Guards `weights_dtype`: under open_clip's autocast names (amp, amp_bf16, tf32) a transformers model's
    weights stay float32 (autocast casts per operation); only the pure and half names load them narrower."""
    from models.transformers_io import weights_dtype

    expected = {None: torch.float32, "fp32": torch.float32, "tf32": torch.float32, "amp": torch.float32,
                "amp_bf16": torch.float32, "amp_bfloat16": torch.float32, "AMP": torch.float32,
                "fp16": torch.float16, "pure_fp16": torch.float16, "bf16": torch.bfloat16, "pure_bf16": torch.bfloat16}
    assert {name: weights_dtype(name) for name in expected} == expected


def test_a_safetensors_file_given_as_a_checkpoint_is_taken_as_one(tmp_path):
    """Guards `looks_like_torch_checkpoint`'s safetensors rule (an 8-byte header length, then its JSON's "{"):
    `--pretrained weights.safetensors` (open_clip reads it) passed the check; a text file still does not."""
    from safetensors.torch import save_file

    from augment.errors import ModelLoadError
    from models.checkpoint_files import check_checkpoint_file, looks_like_torch_checkpoint

    weights = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(2)}, str(weights))
    assert looks_like_torch_checkpoint(weights)
    check_checkpoint_file(weights, "CLIP checkpoint")
    text = tmp_path / "notes.safetensors"
    text.write_text("12345678 not a header {")
    with pytest.raises(ModelLoadError, match="not a PyTorch checkpoint"):
        check_checkpoint_file(text, "CLIP checkpoint")


def test_a_model_folder_whose_config_names_no_architecture_is_not_refused_as_another(tmp_path):
    """Guards `check_architecture`: a config.json naming no `architectures` (a hand-written or older config) is
    loaded for what it is asked as; one naming another architecture is refused in one line."""
    import json

    from augment.errors import ModelLoadError
    from augment.registry import ResolvedSource
    from models.transformers_io import check_architecture

    folder = tmp_path / "blip"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "blip"}))
    resolved = ResolvedSource("blip", str(folder), True)
    check_architecture(resolved, "BlipForImageTextRetrieval", "BLIP")
    (folder / "config.json").write_text(json.dumps({"model_type": "blip", "architectures": ["BlipForConditionalGeneration"]}))
    with pytest.raises(ModelLoadError, match="it is a BlipForConditionalGeneration, not a BlipForImageTextRetrieval$"):
        check_architecture(resolved, "BlipForImageTextRetrieval", "BLIP")


def test_a_hub_model_loads_from_the_cache_alone_when_offline_is_set_after_import(monkeypatch):
    """Guards `pretrained_kwargs`: HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) set after huggingface_hub read its
    constants still keeps from_pretrained to local files; a folder always; a Hub id online keeps its revision."""
    from augment.registry import ResolvedSource
    from models.transformers_io import pretrained_kwargs

    hub_model = ResolvedSource("org/model", "org/model", False)
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    assert pretrained_kwargs(hub_model, "v1") == {"trust_remote_code": False, "revision": "v1"}
    assert pretrained_kwargs(ResolvedSource("m", "/models/m", True), "v1") == {"trust_remote_code": False,
                                                                              "local_files_only": True}
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    assert pretrained_kwargs(hub_model, "v1") == {"trust_remote_code": False, "local_files_only": True, "revision": "v1"}


# ----------------------------------------------------------------------------- generator seeds (audit BX)


def test_the_two_captions_of_one_image_get_their_own_diffusion_seeds():
    """Guards BW's M22: a row's seed without its caption's index gave an image's two captions the same noise."""
    from augment.generators.base import row_seed
    from augment.generators.diffusion import DiffusionSettings, TextToImageGenerator

    generator = TextToImageGenerator(DiffusionSettings(model="tiny-sd", batch_size=4), pipe=object())
    seen = []

    def record(call, seeds):
        seen.extend(seeds)
        return [None] * len(call.slots), None

    generator.call_pipeline = record
    items = [{"image_id": "i0", "captions": ["a red cube", "a blue sphere"], "split": "train"}]
    (call,) = generator.plan_calls(generator.jobs(items, 1), 1)
    generator._run_call(call, 5)
    assert seen == [row_seed(5, "i0", 0, 0), row_seed(5, "i0", 1, 0)] and seen[0] != seen[1]


def test_the_seed_hash_is_sha256_of_the_parts_joined_by_a_bar_first_8_bytes_big_endian_63_bits():
    """augment.seeds' hash is what pools and runs made before it reproduce with: joining the parts with no bar
    (so (12, 3) and (1, 23) share a seed), 62 bits, little-endian bytes or row_seed's parts in another order
    passed every test, each test comparing the code with itself (audit CJ)."""
    import hashlib

    from augment.seeds import derive_seed, row_seed

    def spelled_out(text: bytes) -> int:  # the module's stated rule, on the parts written out by hand
        return int.from_bytes(hashlib.sha256(text).digest()[:8], "big") & (2**63 - 1)

    assert derive_seed(5, "pgd", 0) == spelled_out(b"5|pgd|0") == 3707017337483619137
    assert row_seed(3, "img 7", 1, 2) == spelled_out(b"3|img 7|1|2") == 118010870569785355
    assert derive_seed(7, "crop", 3) == spelled_out(b"7|crop|3") == 6126548120234799522  # bit 62 set
    assert derive_seed(12, 3) != derive_seed(1, 23)


# ----------------------------------------------------------------------------- i2t-/t2t- deduplication (audit BX)


def test_outputs_differing_only_in_a_final_question_or_exclamation_mark_are_one_output():
    """Guards a variant of BW's M27: `normalised` keeping a final ?/! (only its "." and "。" stripped) passed the
    dedup tests, which end their duplicates in "." or "。"; "a dog runs?" then counted as a paraphrase of "A dog runs."."""
    from augment.generators.paraphrase import DistinctCollector

    collector = DistinctCollector(3, refuse=["A dog runs."])
    for text in ("a dog runs?", "A dog runs!", "a dog runs", "A cat sits!", "a cat sits?"):
        collector.offer(text, 0)
    assert [text for text, _ in collector.kept] == ["A cat sits!"]


def test_a_caption_given_all_n_outputs_carries_no_shortfall_note():
    """Guards a mutation (audit BX): the shortfall note's `kept >= n` as `kept > n` passed every test (each tried a
    short caption only); every full caption's rows then said "only n of n distinct ... after R sampling rounds"."""
    from augment.generators.paraphrase import shortfall_note

    assert shortfall_note(2, 2, 3, "captions") == {}
    assert shortfall_note(1, 2, 3, "captions") == {"note": "only 1 of 2 distinct captions after 3 sampling rounds"}


# ----------------------------------------------------------------------------- checkpoints (audit BX)


@pytest.mark.parametrize("elapsed", [-1.0, -1, float("inf")])
def test_a_training_state_of_negative_or_endless_elapsed_seconds_is_no_training_state(elapsed):
    """Guards BW's un-run M46: the check's `elapsed >= 0` dropped passed every test (only text was tried); a resume
    then took up a negative clock and reported a run's seconds below zero."""
    from train.checkpoint import _state_problem

    assert _state_problem({"step": 3, "elapsed_seconds": elapsed}) == (
        f"'elapsed_seconds' must be a number of seconds, got {elapsed!r}")
    assert _state_problem({"step": 3, "elapsed_seconds": 0.0}) is None


# ----------------------------------------------------------------------------- recipe keys (audit BX)


def _text_generators_without_models(batch_size: int, dtype: str) -> tuple:
    """A captioner and a paraphraser of these settings, built without a model: `params` reads only the settings."""
    from augment.generators.captioner import CaptionerGenerator
    from augment.generators.paraphrase import ParaphraseGenerator, Sampling

    from tests.conftest import without_model

    return (without_model(CaptionerGenerator, prompt=None, batch_size=batch_size, dtype=dtype, sampling=Sampling()),
            without_model(ParaphraseGenerator, kind="seq2seq", prompt_template=None, batch_size=batch_size, dtype=dtype,
                          sampling=Sampling()))


def test_a_diffusion_pools_params_leave_out_its_device_and_batch_size():
    """Guards a mutation (audit BX): t2i-sd's params keeping its batch size passed every test; a killed run resumed
    on a smaller GPU with a lower --batch-size (each row records its call layout) was then refused as another pool."""
    from augment.generators.diffusion import DiffusionSettings, TextToImageGenerator

    pipe = types.SimpleNamespace(scheduler=object(), vae_scale_factor=8, default_sample_size=8)  # what params reads
    params = [TextToImageGenerator(DiffusionSettings(model="tiny-sd", batch_size=size, device=device), pipe=pipe)
              .params() for size, device in ((4, "cpu"), (2, "cuda"))]
    assert params[0] == params[1] and "batch_size" not in params[0]


def test_the_text_generators_recorded_params_name_their_dtype():
    """Guards BW's un-run M26: the captioner's params without its dtype passed every test; pool.json then recorded
    nothing of it, and a pool begun in fp32 resumed under --dtype bf16 mixed captions sampled in two precisions."""
    assert all(generator.params()["dtype"] == "bf16" for generator in _text_generators_without_models(4, "bf16"))


def test_the_text_generators_recorded_params_name_their_batch_size():
    """Guards a mutation (audit BX): the paraphraser's params without its batch size passed every test; they seed per
    batch, so a pool resumed under another --batch-size (which the README says is refused) mixed two seedings."""
    assert all(generator.params()["batch_size"] == 3 for generator in _text_generators_without_models(3, "fp32"))


# ----------------------------------------------------------------------------- benchmarks' arithmetic (audit CA)


def test_interleaved_sides_get_one_untimed_run_then_the_median_of_their_own_wall_and_cpu_times(monkeypatch):
    """Guards audit CA's M01/M02: `_interleaved` without its untimed first run of each side (first-use costs then
    all fall on the baseline, timed first), or its `seconds` the median of the CPU times, passed every test."""
    import bench.bench_attacks as bench

    calls, clock = [], {"a": iter([(5.0, 10.0), (1.0, 30.0), (3.0, 20.0)]), "b": iter([(2.0, 1.0)] * 3)}

    def side(name):
        return lambda: calls.append(name) or name

    def timed(fn):
        name = fn()
        wall, cpu = next(clock[name])
        calls[-1] += " timed"
        return wall, cpu, name

    monkeypatch.setattr(bench, "_timed", timed)
    measured = bench._interleaved({"a": side("a"), "b": side("b")}, repeats=3)
    assert calls == ["a", "b"] + ["a timed", "b timed"] * 3
    assert measured["a"] == {"seconds": 3.0, "cpu_seconds": 20.0, "result": "a"}
    assert measured["b"]["seconds"] == 2.0 and measured["b"]["cpu_seconds"] == 1.0
    # a ratio is baseline over ours: > 1 when ours is faster
    assert bench._ratio(measured, "a", "b", "seconds") == 1.5 and bench._ratio(measured, "a", "b", "cpu_seconds") == 20


class _BenchVictim:
    """What `bench_multimodal` reads of a victim: embeddings, `fast_text` and `library_layers`."""
    fast_text = True

    def encode_image(self, images):
        return images.flatten(1)[:, :2]

    def encode_text(self, texts):
        return torch.tensor([[float(len(text)), 1.0] for text in texts])

    def library_layers(self):
        import contextlib

        return contextlib.nullcontext()


def _interleaving_at(monkeypatch, times: dict[str, tuple[float, float]]) -> None:
    """`bench_attacks._interleaved` stood in for: each side run once, its (wall, CPU) seconds fixed by `times`."""
    import bench.bench_attacks as bench

    monkeypatch.setattr(bench, "_interleaved", lambda sides, repeats: {
        name: {"seconds": times[name][0], "cpu_seconds": times[name][1], "result": fn()} for name, fn in sides.items()})


def _bench_multimodal(monkeypatch, attack):
    """`bench_multimodal` of one fake `attack(victim, pixels, captions, image_of_text) -> (images, texts)` on 2 images
    of 2 and 1 captions, each side timed by fixed numbers (before loop 8 s, loop 4 s, batched 1 s; CPU 16/6/2 s)."""
    import bench.bench_attacks as bench
    import train.attacks

    victim = _BenchVictim()
    monkeypatch.setattr(train.attacks, "build_attack", lambda *a, **k: lambda p, c, i: types.SimpleNamespace(
        **dict(zip(("images", "texts"), attack(victim, p, c, i)))))
    _interleaving_at(monkeypatch, {"one_at_a_time_before": (8.0, 16.0), "one_at_a_time": (4.0, 6.0), "batched": (1.0, 2.0)})
    pixels = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2) / 24
    out = bench.bench_multimodal(victim, None, pixels, ["a dog", "the dog runs", "a cat"], torch.tensor([0, 0, 1]),
                                 repeats=1, names=("sep",))
    return out["attacks"]["sep"]


def test_bench_multimodal_ratios_are_each_loop_over_batched_and_a_faithful_attack_is_identical(monkeypatch):
    """Guards audit CA's M04/M08/M12/M13: `ratio_loop_over_batched` inverted, the loop's caption offset not
    advanced (every image attacked with the first image's captions), the CPU ratio of wall times, or the "before"
    ratio of the product's loop, passed every test: the README's speed-ups come from these fields."""
    entry = _bench_multimodal(monkeypatch, lambda victim, pixels, captions, image_of_text: (
        pixels + 1 / 255, [caption.upper() for caption in captions]))
    assert entry["ratio_loop_over_batched"] == 4.0 and entry["cpu_ratio_loop_over_batched"] == 3.0
    assert entry["ratio_before_loop_over_batched"] == 8.0 and entry["cpu_ratio_before_loop_over_batched"] == 8.0
    assert entry["identical_texts"] and entry["identical_texts_before"]
    assert entry["pixels_differing"] == entry["pixels_differing_before"] == 0 and entry["pixels"] == 24


def test_bench_multimodal_flags_a_batched_side_that_attacks_otherwise(monkeypatch):
    """Guards audit CA's M05/M06/M07: the identity checks comparing the loop's images or captions with themselves,
    or the "before" loop's captions with the product loop's instead of the batched ones, passed every test; a
    speed-up that changes the adversarial examples was then reported as the same attack."""
    def batch_dependent(victim, pixels, captions, image_of_text):
        # batch-size-dependent pixels; the batch changes its captions as the "before" loop does not
        batched = len(pixels) > 1
        return pixels + len(pixels) / 255, [caption + ("!" if batched else "") for caption in captions]

    entry = _bench_multimodal(monkeypatch, batch_dependent)
    assert not entry["identical_texts"] and not entry["identical_texts_before"]
    assert entry["pixels_differing"] == entry["pixels_differing_before"] == 24
    assert entry["max_image_difference"] == pytest.approx(1 / 255)

    def before_differs(victim, pixels, captions, image_of_text):
        return pixels, [caption + ("" if victim.fast_text else " (before)") for caption in captions]

    entry = _bench_multimodal(monkeypatch, before_differs)
    assert entry["identical_texts"] and not entry["identical_texts_before"]


def test_pgd_comparison_measures_the_baselines_own_images_and_its_ratio(monkeypatch):
    """Guards audit CA's M09: the no-random-start check differencing mat-plus's images with themselves passed every
    test (torchattacks is not installed here, so `bench_pgd` never ran); a baseline making other images then read as
    the same attack. torchattacks is stood in for by a PGD on mat-plus's loop, faithful or shifted by 1e-3; the
    victim is a linear one."""
    import contextlib
    import sys

    import bench.bench_attacks as bench
    import train.attacks
    from train.attacks import pgd_linf

    weight = torch.linspace(-1, 1, 3 * 4 * 4 * 2).reshape(3 * 4 * 4, 2)
    victim = types.SimpleNamespace(logit_scale=torch.tensor(10.0), library_layers=contextlib.nullcontext,
                                   encode_image=lambda pixels: pixels.flatten(1) @ weight,
                                   encode_text=lambda texts: torch.tensor([[1.0, 0.0], [0.0, 1.0]])[:len(texts)])

    def torchattacks_with(shift):
        class PGD:
            def __init__(self, model, eps, alpha, steps, random_start):
                self.model, self.settings = model, (eps, steps, alpha)

            def __call__(self, images, labels):
                adversarial = pgd_linf(images, lambda x: F.cross_entropy(self.model(x), labels), *self.settings,
                                       random_start=False)
                return torch.cat([adversarial[:1] + shift, adversarial[1:]])
        return types.SimpleNamespace(PGD=PGD)

    _interleaving_at(monkeypatch, {"torchattacks, library layers": (6.0, 12.0), "torchattacks": (3.0, 6.0),
                                   "mat-plus pgd_linf": (2.0, 4.0), "mat-plus PGD (pair objective)": (1.0, 2.0)})
    monkeypatch.setattr(train.attacks, "PGD", lambda victim, **settings: lambda pixels, captions:
                        types.SimpleNamespace(images=pixels))
    pixels = torch.linspace(0.2, 0.8, 2 * 3 * 4 * 4).reshape(2, 3, 4, 4)
    captions = ["a red cube on the left", "two blue spheres"]
    monkeypatch.setitem(sys.modules, "torchattacks", torchattacks_with(0.0))
    report = bench.bench_pgd(victim, pixels, captions, repeats=1)
    assert report["ratio_torchattacks_over_matplus"] == 3.0 and report["ratio_torchattacks_same_model_over_matplus"] == 1.5
    assert report["cpu_ratio_torchattacks_over_matplus"] == 3.0 and report["linf"]["mat-plus pgd_linf"] > 0
    fixed = report["without_random_start"]
    assert fixed["pixels_differing"] == fixed["pixels_beyond_rounding"] == 0 and fixed["pixels"] == pixels.numel()
    monkeypatch.setitem(sys.modules, "torchattacks", torchattacks_with(1e-3))
    fixed = bench.bench_pgd(victim, pixels, captions, repeats=1)["without_random_start"]
    assert fixed["pixels_differing"] == fixed["pixels_beyond_rounding"] == pixels[0].numel()
    assert fixed["max_image_difference"] == pytest.approx(1e-3, rel=1e-3)


def test_attack_bench_fails_on_captions_that_either_loop_makes_otherwise():
    """Guards audit CA's M10: the exit check's `identical_texts and identical_texts_before` as `or` passed every
    test (none reached `main`'s check); a batched attack whose captions differ from one loop then exited 0."""
    from bench.bench_attacks import captions_that_differ

    def entry(same, same_before):
        return {"identical_texts": same, "identical_texts_before": same_before}

    report = {"multimodal": {"attacks": {"sep": entry(True, True), "sga": entry(True, False),
                                         "co-attack": entry(False, True), "bert-attack": entry(False, False)}}}
    assert captions_that_differ(report) == ["sga", "co-attack", "bert-attack"]


def test_image_generator_bench_takes_each_modes_median_and_the_loop_over_batched_speed_up(monkeypatch):
    """Guards audit CA's M15/M16/M20: `bench_method`'s speed-up inverted, its same-images bar `<` one 8-bit level
    instead of `<=`, or the batched median taken of the loop's times, passed every test (none ran `bench_method`)."""
    from augment.generators import diffusion

    import bench.bench_image_generators as bench

    class Generator:
        pipe = None

        def __init__(self, settings, pipe=None):
            pass

        def jobs(self, items, n):
            return [(item["image_id"], k) for item in items for k in range(n)]

        def params(self):
            return {}

    runs = {"loop": iter([6.0, 2.0, 4.0]), "batched": iter([1.0, 3.0, 2.0])}
    images = {"loop": [np.full((2, 2, 3), 10, np.uint8)], "batched": [np.full((2, 2, 3), 11, np.uint8)]}
    monkeypatch.setitem(diffusion.GENERATOR_CLASSES, "fake", Generator)
    monkeypatch.setattr(bench, "sample_world_items", lambda count, seed: [{"image_id": i} for i in range(count)])
    monkeypatch.setattr(bench, "loop_runner", lambda generator, jobs, seed: lambda: "loop")
    monkeypatch.setattr(bench, "batched_runner", lambda generator, items, n, seed: lambda: "batched")

    def timed(device, run, pipe):
        mode = run()
        seconds = next(runs[mode])
        return images[mode], seconds, {}, {"seconds": {"unet": seconds / 2}}

    monkeypatch.setattr(bench, "timed", timed)
    args = types.SimpleNamespace(model="tiny-sd", batch_size=2, steps=1, strength=0.5, size=None, images=2, n=1, seed=0,
                                 repeats=3)
    result = bench.bench_method("fake", args, "cpu", "fp32")
    assert result["loop"]["seconds"] == 4.0 and result["batched"]["seconds"] == 2.0 and result["speedup"] == 2.0
    assert result["loop"]["images_per_s"] == 0.5 and result["batched"]["breakdown"] == {"seconds": {"unet": 1.0}}
    assert result["max_pixel_difference"] == 1 and result["same_images"]  # within one 8-bit level
    images["batched"] = [np.full((2, 2, 3), 12, np.uint8)]
    runs = {"loop": iter([6.0, 2.0, 4.0]), "batched": iter([1.0, 3.0, 2.0])}
    assert not bench.bench_method("fake", args, "cpu", "fp32")["same_images"]
    # --images 5 with --n 2: the loop makes 5 images, the batched side 3 items x 2; the speed-up compares rates
    runs = {"loop": iter([6.0, 2.0, 4.0]), "batched": iter([1.0, 3.0, 2.0])}
    result = bench.bench_method("fake", types.SimpleNamespace(**{**vars(args), "images": 5, "n": 2}), "cpu", "fp32")
    assert result["images"] == 5 and result["batched"]["images"] == 6 and result["batched"]["images_per_s"] == 3.0
    assert result["speedup"] == 3.0 / 1.25


def test_image_generator_bench_helpers_pick_the_median_run_and_the_signed_pixel_gap():
    """Guards audit CA's M17/M18/M19: `median_run` indexing the breakdowns by rank not by run, the pixel gap taken
    in uint8 (0 - 1 wraps to 255), or the bound leaving out the VAE's encoding, passed every test."""
    from bench.bench_image_generators import max_pixel_difference, median_run, per_image_bound

    assert median_run([5.0, 1.0, 3.0, 9.0], ["five", "one", "three", "nine"]) == "three"  # lower median
    assert max_pixel_difference([np.zeros((2, 2), np.uint8)], [np.ones((2, 2), np.uint8)]) == 1
    assert max_pixel_difference([np.full((1, 1), 3, np.uint8)] * 2, [np.full((1, 1), 3, np.uint8), np.zeros((1, 1), np.uint8)]) == 3
    assert per_image_bound(6.0, {"seconds": {"unet": 1.0, "vae_encode": 0.5, "vae_decode": 0.5, "text": 9.0}}) == 3.0


def test_train_loop_step_times_are_the_median_of_the_timed_steps_after_the_untimed(monkeypatch):
    """Guards audit CA's M22/M23/M25: the timed window from `step > untimed` (one timed step fewer), the step time
    a mean, or the data share the data wait's mean instead of its share of the timed steps' time, passed every test."""
    import bench.bench_train_loop as loop

    clock = [0.0]
    durations, waits = [100.0, 100.0, 1.0, 2.0, 6.0], [50.0, 50.0, 0.5, 1.0, 1.5]
    trainer = types.SimpleNamespace(cfg=types.SimpleNamespace(workers=2), step_data_seconds=None)

    def train_step(step):
        clock[0] += durations[step]
        trainer.step_data_seconds = waits[step]

    trainer.train_step = train_step
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    result = loop.time_steps(trainer, types.SimpleNamespace(batch_size=4), "cpu", untimed=2, timed=3)
    assert result["step_s_all"] == [1.0, 2.0, 6.0] and result["data_s_all"] == [0.5, 1.0, 1.5]
    assert result["step_s"] == 2.0 and result["images_per_s"] == 2.0 and result["window_images_per_s"] == 12 / 9
    assert result["data_s"] == 1.0 and result["data_share"] == pytest.approx(3 / 9)


def test_scale_ratios_are_each_size_over_the_smallest():
    """Guards audit CA's M27: `ratios` dividing by the largest size's seconds passed every test (none called it);
    "flat" then read as every ratio at or below 1 whatever the growth."""
    from bench.bench_scale import ratios

    results = {"200": {"generate": {"seconds": 2.0}}, "2000": {"generate": {"seconds": 5.0}},
               "20000": {"generate": {"seconds": None}}}
    assert ratios(results, [200, 2000, 20000], ["generate"]) == {"generate": {"200": 1.0, "2000": 2.5, "20000": None}}


def test_scale_bench_keeps_each_jobs_fastest_finished_run_and_its_first():
    """Guards audit CA's M28: the repeats' summary keeping the slowest run (`max` for `min`) passed every test
    (none reached `main`'s summary); the README's "flat" row then showed the most loaded repeat."""
    from bench.bench_scale import summarise_runs

    runs = [{"seconds": 4.0, "cpu_seconds": 3.0, "run": 1}, {"seconds": None, "cpu_seconds": None, "run": 2},
            {"seconds": 2.0, "cpu_seconds": 2.5, "run": 3}, {"seconds": 3.0, "cpu_seconds": 1.5, "run": 4}]
    summary = summarise_runs(runs)
    assert summary["run"] == 3 and summary["seconds"] == 2.0 and summary["cpu_seconds"] == 1.5
    assert summary["seconds_all"] == [4.0, None, 2.0, 3.0]
    assert summary["first_seconds"] == 4.0 and summary["first_cpu_seconds"] == 3.0
    failed = summarise_runs([{"seconds": None, "cpu_seconds": None, "error": "boom"}])
    assert failed["error"] == "boom" and failed["seconds"] is None and failed["cpu_seconds"] is None


def _timed_in_turn(monkeypatch, module, seconds):
    """`module._timed` giving each call the next (wall, CPU) of `seconds` (cycled), after running the function."""
    import itertools

    cycle = itertools.cycle(seconds)
    monkeypatch.setattr(module, "_timed", lambda fn: (next(cycle), fn()))


def test_trainer_bench_steps_are_warmed_up_and_report_mat_over_clean(monkeypatch):
    """Guards audit CA's M33/M37: `bench_steps`' MAT/clean inverted, or its untimed first step of each trainer
    dropped, passed every test (none ran `bench_steps`)."""
    import contextlib
    from pathlib import Path

    import bench.bench_trainer as bench

    steps = []

    def trainer(method):
        model = types.SimpleNamespace(library_layers=contextlib.nullcontext)
        return types.SimpleNamespace(model=model, train_step=lambda step: steps.append((method, step)))

    monkeypatch.setattr(bench, "_trainer", lambda method, source, out, args: trainer(method))
    # per step: clean, clean with the library's layers, mat, mat with the library's layers
    _timed_in_turn(monkeypatch, bench, [(1.0, 2.0), (1.5, 2.5), (5.0, 4.0), (6.0, 5.0)])
    result = bench.bench_steps("source", Path("work"), types.SimpleNamespace(repeats=3, pgd_steps=2))
    assert steps[:2] == [("clean", 0), ("mat", 0)] and len(steps) == 2 + 3 * 4
    assert result["mat_over_clean"] == 5.0 and result["mat_over_clean_cpu"] == 2.0 and result["target_mat_over_clean"] == 3
    assert not result["within_target"] and result["within_target_cpu"]
    assert result["mat_step_library_layers_s"] == 6.0 and result["clean_step_library_layers_cpu_s"] == 2.5


def test_trainer_bench_text_attack_ratios_and_same_captions_of_all_three_sides(monkeypatch):
    """Guards audit CA's M34: `same_captions` comparing the batched side's captions with themselves passed every test
    (none ran `bench_text_attack`): a one-by-one loop making other captions was reported as the same."""
    import bench.bench_trainer as bench
    import train.attacks.text

    def attack_class(loop_suffix):
        class Attack:
            def __init__(self, victim, mlm, loss, text_batch=None):
                self.victim, self.one_by_one = victim, text_batch == 1

            def __call__(self, pixels, texts):
                # the suffix: the product's one-by-one loop only (its "before" run encodes without fast_text)
                suffix = loop_suffix if self.one_by_one and self.victim.fast_text else ""
                return types.SimpleNamespace(texts=[text.upper() + suffix for text in texts])
        return Attack

    batch = types.SimpleNamespace(pixels=torch.zeros(2, 3, 2, 2), texts=["a dog", "two cats"])
    victim = _BenchVictim()
    victim.device = "cpu"
    mat = types.SimpleNamespace(context=types.SimpleNamespace(model=victim), global_batch=2,
                                data=types.SimpleNamespace(plan=lambda first, size: None,
                                                           materialise=lambda plan, first, size, preprocess: batch),
                                cfg=types.SimpleNamespace(mlm="tiny-mlm", batch_size=2),
                                model=types.SimpleNamespace(preprocess_eval=None))
    # per repeat: one by one as before, batched, one by one
    _timed_in_turn(monkeypatch, bench, [(8.0, 16.0), (1.0, 2.0), (4.0, 6.0)])
    monkeypatch.setattr(train.attacks.text, "BertAttack", attack_class(""))
    result = bench.bench_text_attack(mat, repeats=2)
    assert result["same_captions"] and result["captions_changed"] == 2
    assert result["loop_over_batched"] == 4.0 and result["loop_over_batched_cpu"] == 3.0
    assert result["before_loop_over_batched"] == 8.0 and result["before_loop_over_batched_cpu"] == 8.0
    monkeypatch.setattr(train.attacks.text, "BertAttack", attack_class("!"))
    assert not bench.bench_text_attack(mat, repeats=2)["same_captions"]


def test_train_loop_loader_rate_leaves_out_the_untimed_batches(monkeypatch):
    """Guards audit CA's M26: `time_loader` not drawing its `untimed` batches before the clock (the workers' start-up
    then timed as the loader's rate) passed every test: the loader test's start-up is too short to tell."""
    import bench.bench_train_loop as loop

    clock, drawn = [0.0], []

    def batches(trainer, count):
        for index in range(count):
            clock[0] += 10.0 if index < 2 else 1.0  # two batches of start-up, then one a second
            drawn.append(index)
            yield index

    monkeypatch.setattr(loop, "loader_batches", batches)
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    measured = loop.time_loader(types.SimpleNamespace(cfg=types.SimpleNamespace(batch_size=4)), 2, 3)
    assert drawn == [0, 1, 2, 3, 4]
    assert measured == {"loader_s_per_batch": 1.0, "loader_images_per_s": 4.0, "loader_untimed_batches": 2,
                        "loader_timed_batches": 3}


def test_text_generator_bench_keeps_the_best_run(monkeypatch):
    """Guards audit CA's M35: `captions_per_second` keeping the slowest run (`max` for `min`) passed every test."""
    import bench.bench_text_generators as bench

    clock, durations = [0.0], iter([3.0, 1.0, 2.0])
    monkeypatch.setattr(bench, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))

    def augment():
        clock[0] += next(durations)

    assert bench.captions_per_second(augment, 10, 3) == (10.0, 1.0)


def test_scoring_bench_speed_ratios_are_each_sides_rate_over_clipscores():
    """Guards audit CA's M31: the first pass's ratio against CLIPScore reading the files inverted passed every test
    (`bench_pairs` only runs in full); the figures are now `speed_ratios`, pinned here with made-up repeats."""
    from bench.bench_scoring import LABELS, speed_ratios

    times = {name: [1.0] for name in LABELS} | {"ours": [3.0, 1.0, 2.0], "torchmetrics": [4.0],
                                                "torchmetrics_from_files": [8.0], "pipeline_cold": [4.0, 1.0, 2.0],
                                                "pipeline_rescore": [0.5]}
    speed = speed_ratios(times, {"torchmetrics_from_files": [6.0, 3.0, 9.0], "pipeline_cold": [2.0, 5.0, 1.0]}, 8)
    assert speed["seconds_median"]["ours"] == 2.0 and speed["pairs_per_second"]["ours"] == 4.0
    assert speed["ratio_ours_vs_torchmetrics"] == 2.0 and speed["ratio_pipeline_cold_vs_torchmetrics"] == 2.0
    assert speed["ratio_pipeline_cold_vs_torchmetrics_from_files"] == 4.0
    assert speed["ratio_pipeline_rescore_vs_torchmetrics_from_files"] == 16.0
    assert speed["cpu_seconds_median"] == {"torchmetrics_from_files": 6.0, "pipeline_cold": 2.0}
    assert speed["cpu_ratio_pipeline_cold_vs_torchmetrics_from_files"] == 3.0


def test_text_generator_bench_ratio_is_mat_plus_rate_over_nlpaugs(monkeypatch):
    """Guards audit CA's M36: the EDA comparison's ratio inverted (nlpaug's rate over mat-plus's) passed every test
    (nlpaug is not installed here, so `bench_eda` never ran); nlpaug and WordNet are stood in for, the rates fixed."""
    import sys

    import augment.wordnet
    import bench.bench_text_generators as bench

    word = types.SimpleNamespace(RandomWordAug=lambda action, aug_p: action)
    monkeypatch.setitem(sys.modules, "nlpaug", types.SimpleNamespace(augmenter=types.SimpleNamespace(word=word)))
    monkeypatch.setitem(sys.modules, "nlpaug.augmenter", types.SimpleNamespace(word=word))
    monkeypatch.setitem(sys.modules, "nlpaug.augmenter.word", word)
    monkeypatch.setattr(augment.wordnet, "require_wordnet", lambda: None)
    monkeypatch.setattr(augment.wordnet, "synonyms", lambda word: [])
    monkeypatch.setattr(bench, "tagger_available", lambda: False)
    # per op: mat-plus, then nlpaug (rs, rd); then mat-plus alone (sr, ri, all four)
    rates = iter([(300.0, 0.1), (100.0, 0.3), (200.0, 0.15), (400.0, 0.075), (50.0, 0.6), (60.0, 0.5), (40.0, 0.75)])
    monkeypatch.setattr(bench, "captions_per_second", lambda run, count, repeat: next(rates))
    args = types.SimpleNamespace(alpha=0.1, seed=0, repeat=1)
    rows = bench.bench_eda(args, ["a dog runs", "two cats sit"])["word_level"]
    assert [(row["op"], row["ratio"]) for row in rows] == [("rs", 3.0), ("rd", 0.5)]


def test_scoring_bench_score_gap_is_each_sides_distance_from_clipscore():
    """Guards audit CA's M32: the gap that fails the scoring bench measured as each side's distance from itself (always
    0) passed every test (`bench_pairs` only runs in full); it is now `score_agreement`, pinned here."""
    from bench.bench_scoring import score_agreement

    agreement = score_agreement(30.0, 30.25, 30.5, 29.5)
    assert agreement["abs_difference"] == 1.0 and agreement["pipeline_cold"] == 30.25 and agreement["torchmetrics"] == 30.5
    assert score_agreement(30.5, 30.5, 30.5, 30.5)["abs_difference"] == 0.0


# ----------------------------------------------------------------------------- image identities (audit BZ)


def test_an_embedded_images_identity_is_the_hash_of_all_its_bytes_even_with_a_file_name():
    """Guards mutations (audit BZ): hashing only an embedded image's first 4 KB (two images of one header and
    top rows took one identity: a re-scored pool kept the old scores) and taking the file name an embedded
    image keeps (`path_identity` of a file that is not read) before its bytes both passed every test."""
    import hashlib

    import datasets

    from augment.sources import image_identities

    head = bytes(range(256)) * 20  # 5,120 bytes both images share
    images = [{"bytes": head + b"bottom rows A", "path": "000.png"}, {"bytes": head + b"bottom rows B", "path": None}]
    dataset = datasets.Dataset.from_dict({"image": images}, features=datasets.Features({"image": datasets.Image()}))
    assert image_identities(dataset) == [("bytes", hashlib.sha256(image["bytes"]).hexdigest()) for image in images]


def test_a_path_identity_is_absolute_and_stays_absolute_outside_the_source_folder(tmp_path, monkeypatch):
    """Guards mutations (audit BZ): a relative image path kept as given (the same identity for another file
    under another working folder) and a path outside the source folder made relative to it (`../..`: the
    score cache missed whenever the source moved without its images) both passed every test."""
    from augment.source_cache import identity_within, path_identity

    (tmp_path / "a.png").write_bytes(b"png")
    monkeypatch.chdir(tmp_path)
    identity = path_identity("a.png")
    assert identity[0] == str(tmp_path / "a.png") and identity[1][0] == 3
    assert identity_within(identity, str(tmp_path / "source")) == identity
    assert identity_within(identity, str(tmp_path)) == ["a.png", identity[1]]


def test_each_shards_input_fingerprint_holds_its_last_rows_image():
    """Guards a mutation (audit BZ): a shard's fingerprint over `images[start:start + shard_size - 1]` passed
    every test; an image replaced in a kept shard's last row then passed the resume check, and the pool mixed
    rows of two versions of one image."""
    import datasets

    from augment.sources import shard_input_fingerprints

    rows = datasets.Dataset.from_dict({"image_id": ["a", "b", "c"], "split": ["train"] * 3,
                                       "captions": [["x"], ["y"], ["z"]]})
    before = shard_input_fingerprints(rows, 2, images=[["a.png", [1]], ["b.png", [1]], ["c.png", [1]]])
    after = shard_input_fingerprints(rows, 2, images=[["a.png", [1]], ["b.png", [2]], ["c.png", [1]]])
    assert len(before) == 2 and before[0] != after[0] and before[1] == after[1]


# ----------------------------------------------------------------------------- audit CB: compare tables, truth checker


def _compare_report(tr: float, ir: float, victim: str = "v", attacker: str | None = None, **attacks) -> dict:
    entry = lambda name: {"family": "clip", "name": name, "pretrained": None, "tiny_twin": None}  # noqa: E731
    return {"victim": entry(victim), "attacker": entry(attacker or victim),
            "settings": {"mode": "transfer" if attacker else "white-box"},
            "attacks": {"clean": {"tr@1": 80.0, "ir@1": 70.0, "rsum": 400.0}, "pgd": {"tr@1": tr, "ir@1": ir}, **attacks}}


def test_compare_retrieval_cell_is_tr_then_ir_and_keeps_unknown_attacks():
    """Guards mutations (audit CB): the retrieval cell written IR@1 / TR@1 under its `TR@1/IR@1` header, an
    attack outside ATTACK_NAMES (a newer eval.json's) dropped from the table, and the `RSUM (clean)` column read
    from the last attack's entry (always "-") all passed every test."""
    from analysis.cli import compare_table

    table = compare_table([("run", _compare_report(11.0, 22.0, **{"zz-new": {"tr@1": 5.0, "ir@1": 6.0}}))])
    header, _, row = table.splitlines()
    assert header.split(" | ")[2] == "pgd TR@1/IR@1" and row.split(" | ")[2] == "11.0 / 22.0"
    assert "zz-new TR@1/IR@1" in header and "5.0 / 6.0" in row
    assert header.endswith("RSUM (clean) |") and row.endswith("| 400.0 |")


def test_transfer_tables_leave_out_the_clean_entry():
    """Guards a mutation (audit CB): the clean entry counted as an attack made a `R@1 under clean` transfer table
    (clean numbers are no attack's); it passed every test."""
    from analysis.cli import transfer_tables

    tables = transfer_tables([("white", _compare_report(10.0, 20.0, "a")),
                              ("transfer", _compare_report(30.0, 40.0, "b", attacker="a"))])
    assert "R@1 under pgd" in tables and "under clean" not in tables


def test_truth_checker_plurals_relations_to_plurals_and_frame_relations():
    """Guards mutations (audit CB) of augment/world/truth.py that passed every test: a plural phrase true of one
    matching object ("red circles" of a scene with one), a relation to a plural phrase holding when it held for
    any one of its objects (not all), "above/below the picture" read as the bottom/top of the frame, and an
    attribute after its noun added to the noun's filled slot ("a red circle, blue": red and blue) instead of
    naming another object."""
    from augment.world.scene import Scene, SceneObject
    from augment.world.truth import check_caption

    one_circle = Scene((SceneObject("circle", "red", "large", "left"), SceneObject("square", "blue", "small", "right")))
    assert check_caption("red circles", one_circle) is False
    assert check_caption("a red circle, blue", one_circle) is True
    squares_either_side = Scene((SceneObject("star", "red", "large", "centre"), SceneObject("square", "blue", "small", "left"),
                                 SceneObject("square", "blue", "small", "right")))
    assert check_caption("a red star to the left of the blue squares", squares_either_side) is False
    top_circle = Scene((SceneObject("circle", "red", "large", "top"), SceneObject("square", "blue", "small", "bottom")))
    assert check_caption("a red circle above the picture", top_circle) is True
    assert check_caption("a red circle below the picture", top_circle) is False


def test_grounding_box_arithmetic_and_accuracy_threshold_by_hand():
    """Guards mutations (audit CB) of tasks/grounding.py's box choice and accuracy, checked against values worked
    by hand: IoU exactly 0.5 is a hit (ALBEF's >=) and 0.45 is not; the union subtracts the intersection; a box's
    heat is divided by area ** 0.5 over pixels x .. x + w - 1; the chosen box is the best scored; the random and
    oracle baselines average over and look across candidates."""
    from tasks.grounding import box_scores, choose_box, grounding_hits, oracle_accuracy, random_box_accuracy

    truth = [0, 0, 10, 10]
    assert grounding_hits([[0, 0, 10, 5], [0, 0, 10, 4.5]], [truth, truth]) == [True, False]
    heat = torch.ones(10, 10)
    assert box_scores(heat, [[0, 0, 4, 4], [0, 0, 9, 9]]).tolist() == pytest.approx([16 / 4, 81 / 9])
    patch_heat = torch.zeros(2, 2)
    patch_heat[1, 1] = 1.0  # the bottom-right quarter of the image is hot
    assert choose_box(patch_heat, [[0, 0, 8, 8], [8, 8, 8, 8]], 16, 16) == 1
    candidates = [[[0, 0, 10, 10], [20, 20, 5, 5], [30, 30, 5, 5]], [[0, 0, 10, 10]]]
    assert random_box_accuracy(candidates, [truth, truth]) == pytest.approx(100 * (1 / 3 + 1) / 2)
    assert oracle_accuracy(candidates[:1], [truth]) == 100.0


def test_mat_plus_reference_table_holds_each_caption_once_and_only_text_views():
    """Guards a mutation (audit CB): the MAT+ reference table keeping a pool text view equal to a source caption
    twice (scored twice, weighing that caption double in the image's mean loss) passed every test."""
    from tasks.captioning import references_from_train_data

    pool = types.SimpleNamespace(modality=["text", "text", "image"], caption=["a red circle", "a red disc", "a blue disc"],
                                 image_index=[0, 0, 1])
    data = types.SimpleNamespace(captions=[["a red circle"], ["a blue square"]], pools=[pool])
    assert references_from_train_data(data) == [["a red circle", "a red disc"], ["a blue square"]]


def test_captioning_evaluation_gives_each_image_its_own_references_and_refuses_one_without():
    """Guards a mutation (audit CB): the check that every evaluated image has a reference caption weakened to
    "no image has one" passed every test; an image without references then reached CIDEr with an empty list."""
    from train.evaluate_captioning import _references

    class TinyGallery:
        def __init__(self, images: int, captions: list[str], image_of_text: list[int]):
            self.images, self.captions, self.image_of_text = images, captions, torch.tensor(image_of_text)

        def __len__(self) -> int:
            return self.images

    assert _references(TinyGallery(2, ["a", "b", "c"], [0, 1, 0]), "test") == [["a", "c"], ["b"]]
    with pytest.raises(ValueError, match="at least one reference"):
        _references(TinyGallery(2, ["a", "b"], [0, 0]), "test")


def test_ground_upsamples_the_heat_to_each_images_height_by_width():
    """Guards a mutation (audit CB): `ground` passing an image's (width, height) where `choose_box` takes (height,
    width) passed every test that runs without training (square images score alike either way); on a wide image
    the heat was stretched onto the wrong axes and another box chosen."""
    from tasks.grounding import ground

    class HotTopRight:
        device = torch.device("cpu")

        def tokenize(self, texts):
            return torch.zeros(len(texts), 1)

        def grounding_heatmap(self, pixels, tokens):
            heat = torch.zeros(len(pixels), 2, 2)
            heat[:, 0, 1] = 1.0
            return heat

    wide = (8, 16)  # height 8, width 16: the right half is the box [8, 0, 8, 8]
    assert ground(HotTopRight(), torch.zeros(1, 3, 4, 4), ["the right one"], [[[0, 0, 8, 8], [8, 0, 8, 8]]], [wide]) == [1]
