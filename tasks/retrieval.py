"""Image-text retrieval: the task's training losses, the loss its attacks maximise, and ITM re-ranking.

Training loss, chosen by what the model declares (never by its family's name):

* ITC, `model.itc_loss == "softmax"` (CLIP): symmetric InfoNCE with multi-positive targets (rows
  with equal keys = views of one source image are positives), over the batch gathered from all
  processes (`softmax_itc_loss`, the one contrastive loss training and attacks share);
* ITC, `"sigmoid"` (SigLIP): the pairwise sigmoid loss with the model's learnt bias, labels +1 for
  positives and -1 otherwise, also over the gathered batch;
* other names are looked up in `ITC_LOSSES` (a family may register one, e.g. ALBEF's momentum
  distillation);
* fusion families (`model.has_itm`) add BLIP/ALBEF's image-text matching loss: every image with
  its caption (match), with a hard negative caption and every caption with a hard negative image
  (no match), negatives drawn in proportion to the softmaxed ITC similarity among the
  non-positives of this process's batch. (BLIP gathers candidates across processes; mining within
  the local batch is a simplification that changes nothing on one process.)

Attack loss (what PGD and the word substitutions of adversarial training maximise): the ITC loss
of the local batch, as the attack papers' code attacks fusion models through their ITC embeddings.

Evaluation of fusion families: ITC ranks the gallery, ITM re-ranks each query's top k
(`rerank_scores`), as ALBEF and BLIP evaluate retrieval.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F

from tasks.base import Task

if TYPE_CHECKING:
    from models.base import EncoderOutput, TextTokens, VisionLanguageModel


def multi_positive_targets(image_keys: torch.Tensor, text_keys: torch.Tensor) -> torch.Tensor:
    """[N, M] float: 1 where image and caption share a key."""
    return (image_keys.view(-1, 1) == text_keys.view(1, -1)).float()


def softmax_itc_loss(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE on [N, M] logits with multi-positive (uniform soft) targets. Not open_clip's
    ClipLoss, which labels only the diagonal: here every caption of an image is its positive."""
    logits = logits.float()
    image_targets = positives / positives.sum(1, keepdim=True).clamp(min=1)
    text_targets = positives.T / positives.T.sum(1, keepdim=True).clamp(min=1)
    # a row without any positive (an image with no caption in the batch) adds zero to the sum but still counts
    # in the mean's N: training batches hold every image's captions, and PGD's sign steps ignore the scale
    image_loss = -(image_targets * logits.log_softmax(dim=1)).sum(1).mean()
    text_loss = -(text_targets * logits.T.log_softmax(dim=1)).sum(1).mean()
    return (image_loss + text_loss) / 2


def sigmoid_itc_loss(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """SigLIP: -mean over images of sum over captions of log sigmoid(label x logit), label +-1.
    Not open_clip's SigLipLoss, which labels only the diagonal (see softmax_itc_loss)."""
    labels = 2 * positives - 1
    return -F.logsigmoid(labels * logits.float()).sum() / logits.shape[0]


ItcLoss = Callable[["VisionLanguageModel", "EncoderOutput", torch.Tensor, "RetrievalTask"], torch.Tensor]


def _momentum_distilled(model, output, keys, task) -> torch.Tensor:
    """ALBEF's ITC with momentum distillation and a feature queue (tasks/momentum_distillation.py).

    Computed on this process's batch and queue: a `local_term` of the task's gradient scale."""
    from tasks.momentum_distillation import momentum_distilled_itc_loss

    loss = momentum_distilled_itc_loss(output, keys, alpha=task.distill_alpha, enqueue=not task.inspecting)
    return local_term(loss, task.gradient_scale)


def local_term(loss: torch.Tensor, gradient_scale: float) -> torch.Tensor:
    """A loss term of this process's batch only, in a task whose other terms cover the gathered
    global batch (`Task.gradient_scale` = the world size): its gradient divided by that scale, so
    that the scaled backward and DDP's average leave it a mean over processes, its value
    unchanged, so that the logged loss is the same at any world size (dividing the value too
    logged half the loss under 2 processes)."""
    return loss if gradient_scale == 1 else _ScaleGradient.apply(loss, 1.0 / gradient_scale)


class _ScaleGradient(torch.autograd.Function):
    """Identity forward (the value exactly, no rounding); the gradient times `factor` backward."""

    @staticmethod
    def forward(ctx, value: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return value.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.factor, None


def shared_scalar(value: torch.Tensor | None, gradient_scale: float) -> torch.Tensor | None:
    """A parameter of the gathered loss that every process already sees whole (the ITC logit
    scale / temperature, SigLIP's logit bias): each process's gradient of it is the global batch's
    gradient, not a share of it as the local embedding rows' are, so the scaled backward
    (`Task.gradient_scale` = the world size) and DDP's average left it world-size times the
    one-process gradient. Its gradient is divided by that scale here, its value left as it is, so
    that 2 processes x batch B give the gradient of 1 process x 2B for it too."""
    if value is None or gradient_scale == 1 or not isinstance(value, torch.Tensor) or not value.requires_grad:
        return value
    return _ScaleGradient.apply(value, 1.0 / gradient_scale)


# extra ITC losses by the name a model declares in `itc_loss`
ITC_LOSSES: dict[str, ItcLoss] = {"momentum-distilled": _momentum_distilled}


def _gathered(task: "RetrievalTask", output: "EncoderOutput", keys: torch.Tensor):
    """(image_emb, text_emb, keys) of the global batch; local rows keep their gradient."""
    from train.losses import gather_keys

    image_emb, text_emb = output.image_emb.float(), output.text_emb.float()
    all_keys = gather_keys(keys.to(image_emb.device), task.world_size)
    if task.world_size > 1:
        from open_clip.loss import gather_features  # a plain all_gather that keeps local gradients

        image_emb, text_emb = gather_features(image_emb, text_emb, rank=task.rank, world_size=task.world_size)
    return image_emb, text_emb, all_keys


def itc_loss(model: "VisionLanguageModel", output: "EncoderOutput", keys: torch.Tensor, task: "RetrievalTask",
             gather: bool = True, kind: str | None = None) -> torch.Tensor:
    """The model's ITC loss (or `kind`) of a forward's embeddings (gathered across processes when `gather`)."""
    kind = kind or model.itc_loss
    if kind in ITC_LOSSES:
        return ITC_LOSSES[kind](model, output, keys, task)
    scale, bias = output.logit_scale, output.logit_bias
    if gather:
        image_emb, text_emb, all_keys = _gathered(task, output, keys)
        # every process holds the whole gathered logit matrix: see `shared_scalar`
        scale, bias = shared_scalar(scale, task.gradient_scale), shared_scalar(bias, task.gradient_scale)
    else:
        image_emb, text_emb, all_keys = output.image_emb.float(), output.text_emb.float(), keys.to(output.image_emb.device)
    logits = scale * image_emb @ text_emb.T
    positives = multi_positive_targets(all_keys, all_keys)
    if kind == "softmax":
        return softmax_itc_loss(logits, positives)
    if kind == "sigmoid":
        if bias is not None:
            logits = logits + bias
        return sigmoid_itc_loss(logits, positives)
    raise ValueError(f"unknown ITC loss {kind!r} declared by {model.family}; known: softmax, sigmoid, {', '.join(ITC_LOSSES)}")


def hard_negatives(similarity: torch.Tensor, positives: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per row, one column drawn with probability softmax(similarity) over its non-positives.

    Rows whose every column is positive get a uniformly drawn column (nothing harder exists).
    """
    weights = similarity.detach().float().softmax(dim=1).masked_fill(positives.bool(), 0)
    empty = weights.sum(1) <= 0
    if empty.any():
        weights[empty] = 1.0
    return torch.multinomial(weights + 1e-12 * (weights.sum(1, keepdim=True) <= 0), 1, generator=generator).squeeze(1)


def itc_logits_for_mining(output: "EncoderOutput") -> torch.Tensor:
    """The image embeddings times the ITC logit scale (1/temperature), detached, in float32: times
    the text embeddings, the logits whose softmax draws hard negatives."""
    return output.logit_scale.detach().float() * output.image_emb.detach().float()


def itm_loss(model: "VisionLanguageModel", output: "EncoderOutput", tokens: "TextTokens", keys: torch.Tensor) -> torch.Tensor:
    """BLIP/ALBEF ITM with hard negatives mined from ITC similarities (local batch)."""
    image_emb, text_emb = output.image_emb.detach(), output.text_emb.detach()
    features = output.image_features
    positives = multi_positive_targets(keys, keys).to(image_emb.device)
    # drawn by softmax of the ITC logits, scaled by 1/temperature as ALBEF and BLIP draw them: on
    # raw cosines (in [-1, 1]) the draw is nearly uniform, easy negatives as often as hard ones
    sims = itc_logits_for_mining(output) @ text_emb.float().T
    negative_text = hard_negatives(sims, positives)  # [B] caption for each image
    negative_image = hard_negatives(sims.T, positives.T)  # [B] image for each caption
    batch = len(keys)
    all_features = torch.cat([features, features, features[negative_image]])
    all_tokens = _cat_tokens([tokens, tokens[negative_text], tokens])
    logits = model.itm_logits(all_features, all_tokens)
    labels = torch.cat([torch.ones(batch), torch.zeros(2 * batch)]).to(logits.device)
    # a drawn "negative" that shares the key (only when no true negative exists) is a positive
    labels[batch:2 * batch] = positives[torch.arange(batch), negative_text].float()
    labels[2 * batch:] = positives[negative_image, torch.arange(batch)].float()
    return F.binary_cross_entropy_with_logits(logits.float(), labels)


def _cat_tokens(parts):
    from models.base import TextTokens

    return TextTokens.cat(parts)


class RetrievalTask(Task):
    """Image-text retrieval (see the module docstring)."""

    name = "retrieval"
    model_kind = "retrieval"
    methods = ("clean", "tecoa", "fare", "mat", "mat+")

    def __init__(self, rank: int = 0, world_size: int = 1, itm_weight: float = 1.0, **options: Any):
        super().__init__(rank, world_size, **options)
        self.itm_weight = float(itm_weight)
        self.distill_alpha: float | None = None  # momentum distillation's alpha this step (None: the model's)
        self.inspecting = False

    def on_step(self, model, step: int, steps_per_epoch: int) -> None:
        # ALBEF ramps the distillation weight up over the first epoch: alpha x min(1, step / epoch)
        alpha = getattr(model, "alpha", None)
        if getattr(model, "momentum_distillation", False) and alpha is not None:
            self.distill_alpha = float(alpha) * min(1.0, step / max(1, steps_per_epoch))

    @property
    def gradient_scale(self) -> float:
        # the ITC loss is computed over the gathered global batch on every process: DDP's gradient
        # average then divides the local embedding rows' gradient by the world size once too often
        # (the logit scale and bias, whole on every process, are divided back: `shared_scalar`)
        return float(self.world_size)

    def loss(self, model, pixels, tokens, keys, texts=None, inspect: bool = False) -> torch.Tensor:
        output = model(pixels, tokens, image_features=model.has_itm)
        self.inspecting = inspect
        loss = itc_loss(model, output, keys, self)
        if model.has_itm and self.itm_weight > 0:  # this process's pairs only (`local_term`)
            loss = loss + self.itm_weight * local_term(itm_loss(model, output, tokens, keys), self.gradient_scale)
        return loss

    def image_attack_loss(self, model, tokens, keys, texts=None):
        from models.base import EncoderOutput

        with torch.no_grad():
            text_emb = model.encode_tokens(tokens)
            scale, bias = model.logit_scale, model.logit_bias_param()
            bias = bias.detach() if bias is not None else None
        # the plain ITC loss even for families that train with a stateful one (momentum queues)
        kind = "sigmoid" if model.itc_loss == "sigmoid" else "softmax"

        def loss(pixels: torch.Tensor) -> torch.Tensor:
            output = EncoderOutput(model.encode_image(pixels), text_emb, scale, bias)
            return itc_loss(model, output, keys, self, gather=False, kind=kind)

        return loss

    def text_attack(self, model, config):
        from train.methods import build_text_attack

        return build_text_attack(model, config)


# --------------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def rerank_scores(model: "VisionLanguageModel", sims: torch.Tensor, pixels: "torch.Tensor | Iterable[torch.Tensor]",
                  texts: Sequence[str], k: int, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(i2t, t2i) [N, T] score matrices: for each query's top-k ITC candidates the score the
    family's own evaluation re-ranks by (`itm_rerank_scores`: ALBEF/TCL the raw match logit, BLIP
    the raw match logit plus the ITC similarity, `rerank_adds_itc`), else the ITM log-odds.

    Candidates outside the top k keep their ITC order below every re-ranked one (ITC shifted
    below the lowest re-ranked score, by a shift of the scores' own size: a constant such as
    1e4 would merge ITC scores closer than float32's spacing there, 1e-3, into ties), so R@K
    for K > k still ranks by ITC, as ALBEF's -100 fill does for K <= k. `pixels`: the gallery's (possibly adversarial) images in [0, 1],
    in gallery order, on any device: one [N, 3, H, W] tensor, or its consecutive batches (any
    iterable, e.g. read back from disk one at a time). Every re-ranked pair holds one image, so
    each batch's image features score all the pairs of its images (image queries' top k and the
    caption queries that have them in their top k) and are dropped: memory holds one batch of
    pixels and features, not the gallery's. `texts`: the gallery's (possibly adversarial) captions.
    """
    device = model.device
    n_images, n_texts = sims.shape
    i2t, t2i = torch.zeros(sims.shape), torch.zeros(sims.shape)
    reranked_i2t, reranked_t2i = torch.zeros(sims.shape, dtype=torch.bool), torch.zeros(sims.shape, dtype=torch.bool)
    top_texts = sims.topk(min(k, n_texts), dim=1).indices.cpu()  # [N, k]
    top_images = sims.topk(min(k, n_images), dim=0).indices.T.cpu()  # [T, k]
    # the caption queries' (image, caption) pairs sorted by image: a batch's pairs are one slice
    pair_images = top_images.reshape(-1)
    pair_texts = torch.arange(n_texts).repeat_interleave(top_images.shape[1])
    order = torch.argsort(pair_images, stable=True)
    pair_images, pair_texts = pair_images[order], pair_texts[order]
    tokens = model.tokenize(list(texts))
    # the score a family's own evaluation re-ranks by (ALBEF/TCL/SGA: the raw match logit), else ITM log-odds
    rerank = getattr(model, "itm_rerank_scores", model.itm_logits)
    itc = sims.float().cpu()
    adds_itc = bool(getattr(model, "rerank_adds_itc", False))
    start = 0
    for batch in (pixels.split(batch_size) if isinstance(pixels, torch.Tensor) else pixels):
        end = start + len(batch)
        if end > n_images:
            raise ValueError(f"the pixel batches hold more than the {n_images} images of the similarities")
        features = model.image_features(batch.to(device).float())
        first, last = torch.searchsorted(pair_images, torch.tensor([start, end])).tolist()
        image_queries = (torch.arange(start, end).repeat_interleave(top_texts.shape[1]), top_texts[start:end].reshape(-1))
        caption_queries = (pair_images[first:last], pair_texts[first:last])
        for (image_index, text_index), out, done in ((image_queries, i2t, reranked_i2t),
                                                     (caption_queries, t2i, reranked_t2i)):
            for chunk in range(0, len(image_index), batch_size):
                images, captions = image_index[chunk:chunk + batch_size], text_index[chunk:chunk + batch_size]
                logits = rerank(features[(images - start).to(device)], tokens[captions.to(tokens.input_ids.device)])
                out[images, captions] = logits.float().cpu() + (itc[images, captions] if adds_itc else 0.0)
                done[images, captions] = True
        start = end
    if start != n_images:
        raise ValueError(f"the pixel batches hold {start} images; the similarities {n_images}")
    top = float(itc.max()) if itc.numel() else 0.0
    for out, done in ((i2t, reranked_i2t), (t2i, reranked_t2i)):
        scores = out[done]
        scores = scores[~scores.isnan()]  # a NaN logit ranks as a miss (train.metrics), not the floor's level
        lowest = float(scores.min()) if scores.numel() else 0.0
        out[~done] = (itc - top + lowest - 1.0)[~done]  # every ITC score below the lowest re-ranked one
    return i2t, t2i
