"""ALBEF's forward written out in plain torch from its models/vit.py and models/xbert.py (read,
not copied), on a state dict with ALBEF's key names: the independent reference the ALBEF
family's outputs are checked against (tests/test_albef.py, the model contract)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _linear(sd, name, x):
    return F.linear(x, sd[name + ".weight"], sd[name + ".bias"])


def _norm(sd, name, x, eps):
    return F.layer_norm(x, x.shape[-1:], sd[name + ".weight"], sd[name + ".bias"], eps)


def _heads(x, heads):
    return x.view(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)


def _reference_attention(sd, prefix, hidden, context, additive_mask, heads):
    """xbert's BertAttention: scaled dot product, softmax, output dense + residual + LayerNorm."""
    q, k, v = (_heads(_linear(sd, prefix + "self." + n, x), heads)
               for n, x in (("query", hidden), ("key", context), ("value", context)))
    probs = (q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5 + additive_mask).softmax(-1)
    out = (probs @ v).transpose(1, 2).reshape(hidden.shape)
    return _norm(sd, prefix + "output.LayerNorm", _linear(sd, prefix + "output.dense", out) + hidden, 1e-12)


def reference_albef(sd, cfg, pixels, ids, mask):
    """ALBEF's forward written from its models/vit.py and models/xbert.py, on the raw official
    state dict: (image ITC embedding, text ITC embedding, ITM logits)."""
    v, heads = "visual_encoder.", cfg["vision_heads"]
    x = F.conv2d(pixels, sd[v + "patch_embed.proj.weight"], sd[v + "patch_embed.proj.bias"], stride=cfg["patch_size"])
    x = torch.cat([sd[v + "cls_token"].expand(len(x), -1, -1), x.flatten(2).transpose(1, 2)], 1) + sd[v + "pos_embed"]
    for i in range(cfg["vision_depth"]):
        b = f"{v}blocks.{i}."
        h = _norm(sd, b + "norm1", x, 1e-6)
        q, k, val = _linear(sd, b + "attn.qkv", h).view(*h.shape[:2], 3, heads, -1).permute(2, 0, 3, 1, 4)
        att = ((q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5).softmax(-1)
        x = x + _linear(sd, b + "attn.proj", (att @ val).transpose(1, 2).reshape(x.shape))
        x = x + _linear(sd, b + "mlp.fc2", F.gelu(_linear(sd, b + "mlp.fc1", _norm(sd, b + "norm2", x, 1e-6))))
    image = _norm(sd, v + "norm", x, 1e-6)
    e, bert = "text_encoder.embeddings.", cfg["bert"]
    t = sd[e + "word_embeddings.weight"][ids] + sd[e + "token_type_embeddings.weight"][0]
    t = _norm(sd, e + "LayerNorm", t + sd[e + "position_embeddings.weight"][: ids.shape[1]], 1e-12)
    additive = (1.0 - mask[:, None, None, :].float()) * -10000.0
    for i in range(bert["num_hidden_layers"]):
        p = f"text_encoder.encoder.layer.{i}."
        if i == bert["fusion_layer"]:
            text_cls = t[:, 0]
        h = _reference_attention(sd, p + "attention.", t, t, additive, bert["num_attention_heads"])
        if i >= bert["fusion_layer"]:
            h = _reference_attention(sd, p + "crossattention.", h, image, 0.0, bert["num_attention_heads"])
        t = _norm(sd, p + "output.LayerNorm", _linear(sd, p + "output.dense",
                                                      F.gelu(_linear(sd, p + "intermediate.dense", h))) + h, 1e-12)
    return (F.normalize(_linear(sd, "vision_proj", image[:, 0]), dim=-1),
            F.normalize(_linear(sd, "text_proj", text_cls), dim=-1), _linear(sd, "itm_head", t[:, 0]))
