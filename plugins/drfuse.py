"""DrFuse: disentangled shared and distinct representations, logit pooling, disease-wise attention.

Yao, Yin, Cheung, Liu, Qin. "DrFuse: Learning Disentangled Representation for Clinical
Multi-Modal Fusion with Missing Modality and Modal Inconsistency". AAAI 2024, 38(15):16416-16424;
code github.com/dorothy-yao/drfuse (read at commit a148979). Written from the paper and the
behaviour of that code; none of it is copied.

Model (the code's ``DrFuseModel``):

- EHR: a transformer encoder (:mod:`fusebench.plugins.transformer_ehr`: one trunk layer, then a
  ``shared`` and a ``distinct`` branch of one layer each, mean-pooled over the valid hours);
  the distinct feature has its own head (the EHR prediction). It reads a stay's first 48 hours
  (hourly bins 0-48), the series the code's data holds for both tasks: phenotyping's whole stay
  is cut to them (``ehr_first_bins``).
- CXR: a ResNet-50 stem (conv1 + BatchNorm, no ReLU or max-pool, as the code) followed by two
  ResNet-50 trunks (layer1 to layer4), ``shared`` and ``distinct``, each globally average-pooled
  and projected to ``hidden_size``; the distinct feature has its own head (the CXR prediction).
  Randomly initialised, as the code (ImageNet ResNet34 weights do not apply).
- Both shared features go through one shared MLP (h -> 2h -> h -> h, ReLU); they are fused by
  logit pooling, ``log((2 e^(a+b) + e^a + e^b) / (2 + e^a + e^b))`` elementwise (the logit of
  the mean of sigmoid(a) and sigmoid(b)), for stays with an image, and the EHR one is used alone
  otherwise; the fused feature has its own head.
- Disease-wise attention: one Linear maps each of the three tokens (EHR distinct, fused shared,
  CXR distinct) to a query, a value and one key per label; the query is the mean over the
  tokens present; per label, a softmax over the tokens' keys (the CXR token masked out for stays
  without an image) weights the values; label c's logit is a Linear's row c applied to its
  weighted value. That logit is the model's output.

Training (the code's ``DrFuseTrainer``; every weight 1 there): BCE of the final, EHR, shared
and CXR predictions (the CXR one on stays with an image); the Jensen-Shannon divergence between
the sigmoids of the two shared features; |cosine| between the shared and distinct features of
each modality (CXR on stays with an image); and the attention ranking loss: for each label and
pair of tokens, a margin-0 ranking loss asks the token whose own prediction had the lower
(detached) BCE to get the larger attention weight, on stays with an image, averaged over the
non-zero terms; the three pairs are averaged. One Adam (lr 1e-4, no weight decay, torch's
default betas) over everything, batch 16.

Deliberate differences from the code (its defects are not copied):

- The CNN runs on the present images only; the code runs the all-zero placeholders of stays
  without an image through it, so they shift BatchNorm's batch statistics in training.
- The Jensen-Shannon term sums over stays with an image; the code sums over every stay
  (including the zero placeholders' features) but divides by the number with an image.
- The code's CXR trunks end on a Linear applied to the 4-d feature map, which cannot run (it
  raises a shape error); the global average pool a ResNet has before its ``fc`` is added.
- The code pairs a phenotyping stay only with an X-ray of its first 48 hours; here the task's
  pairing window applies (``--cxr-window``), as for every method.
- The code builds a ``domain_classifier`` and an ``ehr_model_linear`` that its forward never
  uses; they are not built here.
- Its probability-space BCE and ``log(sigmoid)`` are computed from logits (same values,
  no overflow to -inf for large negative features).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from fusebench.hookspecs import hookimpl
from fusebench.plugins.transformer_ehr import TransformerEHREncoder
from fusebench.specs import MethodSpec, ModelConfig

__all__ = [
    "RECIPE",
    "DrFuse",
    "drfuse_losses",
    "fusebench_register_methods",
    "jensen_shannon",
    "logit_pooling",
    "training_step",
]

REFERENCE = ("Yao, Yin, Cheung, Liu, Qin. DrFuse: Learning Disentangled Representation for "
             "Clinical Multi-Modal Fusion with Missing Modality and Modal Inconsistency. AAAI 2024")

# The recipe of the published code (dorothy-yao/drfuse at a148979); "main.py" is its
# command-line defaults, the others its source files.
RECIPE: dict[str, Any] = {
    "lr": 1e-4,                  # main.py --lr
    "weight_decay": 0.0,         # main.py --wd
    "betas": (0.9, 0.999),       # drfuse_trainer.py: optim.Adam with torch's default betas
    "batch_size": 16,            # main.py --batch_size
    "epochs": 100,               # main.py --epochs
    "patience": 10,              # main.py --patience (early stopping; it monitors val AUPRC)
    "lr_patience": 1000,         # no learning-rate schedule in the code: never reduce
    "hidden_size": 256,          # main.py --hidden_size
    "ehr_heads": 4,              # main.py --ehr_n_head
    "ehr_layers": 1,             # main.py --ehr_n_layers (each branch); the trunk has 1
    "ehr_dropout": 0.3,          # main.py --dropout
    "ehr_max_len": 350,          # ehr_transformer.py EHRTransformer max_len
    # main.py reads ehr_{task}_48h_*.pkl for both tasks: the series of a stay's first 48 hours
    # (hourly bins 0-48); phenotyping's whole stay is cut to them. 0: the whole series.
    "ehr_first_bins": 49,
    "lambda_pred_ehr": 1.0,      # main.py --lambda_pred_ehr
    "lambda_pred_cxr": 1.0,      # main.py --lambda_pred_cxr
    "lambda_pred_shared": 1.0,   # main.py --lambda_pred_shared
    "lambda_disentangle_shared": 1.0,  # main.py: weight of the Jensen-Shannon term
    "lambda_disentangle_ehr": 1.0,     # main.py: |cos| of the EHR shared/distinct features
    "lambda_disentangle_cxr": 1.0,     # main.py: |cos| of the CXR shared/distinct features
    "lambda_attn_aux": 1.0,      # main.py: weight of the attention ranking loss
}
TOKENS = ("ehr", "shared", "cxr")  # order of the attention's tokens (the code's)


def logit_pooling(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """DrFuse's elementwise fusion of two shared features a, b:
    ``log((2 e^(a+b) + e^a + e^b) / (2 + e^a + e^b))``, computed with logsumexp; it equals
    ``logit((sigmoid(a) + sigmoid(b)) / 2)``."""
    both = first + second
    numerator = torch.stack([both, both, first, second], dim=-1)
    denominator = torch.stack([torch.zeros_like(first), torch.zeros_like(first), first, second],
                              dim=-1)
    return torch.logsumexp(numerator, dim=-1) - torch.logsumexp(denominator, dim=-1)


def _resnet50_parts() -> nn.Module:
    import torchvision  # 1.5 s to import: only when the model is built

    return torchvision.models.resnet50(weights=None)


class _CXRTrunk(nn.Module):
    """ResNet-50 layer1 to layer4, global average pool, Linear(2048 -> hidden)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        resnet = _resnet50_parts()
        self.layers = nn.Sequential(resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4)
        self.fc = nn.Linear(resnet.fc.in_features, hidden)

    def forward(self, stem: torch.Tensor) -> torch.Tensor:
        return self.fc(self.layers(stem).mean(dim=(2, 3)))


class DrFuse(nn.Module):
    """The DrFuse model; ``forward`` returns the disease-wise attention's logits (B, C).

    Hyper-parameters read from ``config.hparams`` (defaults: :data:`RECIPE`): ``hidden_size``,
    ``ehr_heads``, ``ehr_layers``, ``ehr_dropout``, ``ehr_max_len``, ``ehr_first_bins`` and
    the loss weights
    ``lambda_*`` used by :meth:`losses`.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        hparams = {**RECIPE, **config.hparams}
        hidden = int(hparams["hidden_size"])
        self.num_classes = config.num_classes
        self.ehr = TransformerEHREncoder(
            config.ehr_input_dim, hidden, int(hparams["ehr_heads"]), ("shared", "distinct"),
            trunk_layers=1, branch_layers=int(hparams["ehr_layers"]),
            dropout=float(hparams["ehr_dropout"]), max_len=int(hparams["ehr_max_len"]))
        stem = _resnet50_parts()
        self.cxr_stem = nn.Sequential(stem.conv1, stem.bn1)
        self.cxr_shared = _CXRTrunk(hidden)
        self.cxr_distinct = _CXRTrunk(hidden)
        self.shared_projection = nn.Sequential(
            nn.Linear(hidden, 2 * hidden), nn.ReLU(), nn.Linear(2 * hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden))
        self.ehr_head = nn.Linear(hidden, config.num_classes)
        self.cxr_head = nn.Linear(hidden, config.num_classes)
        self.shared_head = nn.Linear(hidden, config.num_classes)
        # per token: a query, a value and one key per label
        self.attention = nn.Linear(hidden, (2 + config.num_classes) * hidden)
        self.final_head = nn.Linear(hidden, config.num_classes)
        self.ehr_first_bins = int(hparams["ehr_first_bins"]) or None
        # the step has no hparams argument: the resolved weights travel with the model
        self.loss_weights = {k: float(v) for k, v in hparams.items() if k.startswith("lambda_")}

    def outputs(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every output the losses need.

        Returns:
            ``feat_{ehr,cxr}_{shared,distinct}`` (B, hidden) (shared ones after the shared MLP;
            for stays without an image the CXR ones come from a zero feature and no output or
            loss uses them), ``has_cxr`` (B,) bool, logits (B, C)
            ``final``, ``ehr``, ``cxr``, ``shared``, and ``attention`` (B, C, 3): each label's
            weights over the EHR, shared and CXR tokens.
        """
        has_cxr = batch["has_cxr"].to(batch["ehr"].device)
        series, lengths = batch["ehr"], batch["ehr_lengths"]
        if self.ehr_first_bins:
            series = series[:, :self.ehr_first_bins]
            lengths = lengths.clamp(max=self.ehr_first_bins)
        ehr = self.ehr(series, lengths)
        hidden = ehr["shared"].shape[1]
        cxr_shared = ehr["shared"].new_zeros(len(has_cxr), hidden)
        cxr_distinct = torch.zeros_like(cxr_shared)
        if has_cxr.any():  # the CNN sees the present images only
            stem = self.cxr_stem(batch["cxr"][has_cxr])
            cxr_shared = cxr_shared.index_put((has_cxr,), self.cxr_shared(stem))
            cxr_distinct = cxr_distinct.index_put((has_cxr,), self.cxr_distinct(stem))
        ehr_shared = self.shared_projection(ehr["shared"])
        cxr_shared = self.shared_projection(cxr_shared)
        present = has_cxr[:, None]
        fused_shared = torch.where(present, logit_pooling(ehr_shared, cxr_shared), ehr_shared)

        tokens = torch.stack([ehr["distinct"], fused_shared, cxr_distinct], dim=1)  # (B, 3, h)
        query, value, *keys = self.attention(tokens).chunk(2 + self.num_classes, dim=-1)
        query = torch.where(present, query.mean(dim=1), query[:, :2].mean(dim=1))
        scores = torch.einsum("bd,bctd->bct", query, torch.stack(keys, dim=1))
        scores = scores / math.sqrt(hidden)
        absent_token = torch.stack([torch.zeros_like(has_cxr), torch.zeros_like(has_cxr),
                                    ~has_cxr], dim=1)[:, None, :]
        attention = scores.masked_fill(absent_token, float("-inf")).softmax(dim=-1)
        per_label = attention @ value  # (B, C, h)
        final = (per_label * self.final_head.weight).sum(dim=-1) + self.final_head.bias
        return {
            "feat_ehr_shared": ehr_shared, "feat_ehr_distinct": ehr["distinct"],
            "feat_cxr_shared": cxr_shared, "feat_cxr_distinct": cxr_distinct,
            "has_cxr": has_cxr, "final": final, "ehr": self.ehr_head(ehr["distinct"]),
            "cxr": self.cxr_head(cxr_distinct), "shared": self.shared_head(fused_shared),
            "attention": attention,
        }

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.outputs(batch)["final"]

    def losses(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """:func:`drfuse_losses` of this batch with the model's loss weights."""
        return drfuse_losses(self.outputs(batch), batch["y"], self.loss_weights)


def jensen_shannon(first: torch.Tensor, second: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """DrFuse's alignment term: ``0.5 (KL(p || m) + KL(q || m))`` summed over features, with
    p = sigmoid(first), q = sigmoid(second), m = (p + q) / 2 taken elementwise (the code's
    definition), summed over ``rows`` (bool, B) and divided by their number."""
    log_p, log_q = F.logsigmoid(first), F.logsigmoid(second)
    log_m = torch.logaddexp(log_p, log_q) - math.log(2.0)
    terms = 0.5 * (log_p.exp() * (log_p - log_m) + log_q.exp() * (log_q - log_m))
    return (terms.sum(dim=1) * rows).sum() / rows.sum().clamp(min=1)


def _masked_mean(values: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    return (values * rows).sum() / rows.sum().clamp(min=1)


def _ranking(winner_first: torch.Tensor, first: torch.Tensor, second: torch.Tensor,
             rows: torch.Tensor) -> torch.Tensor:
    """Margin-0 ranking loss asking ``first`` > ``second`` where ``winner_first`` (else the
    reverse), on ``rows``; the sum over the non-zero terms divided by their number."""
    sign = winner_first.to(first.dtype) * 2 - 1
    terms = F.margin_ranking_loss(first, second, sign, reduction="none") * rows[:, None]
    return terms.sum() / (terms > 0).sum().clamp(min=1)


def drfuse_losses(outputs: Mapping[str, torch.Tensor], y: torch.Tensor,
                  hparams: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """DrFuse's training loss and its terms from :meth:`DrFuse.outputs`.

    Args:
        outputs: the model's outputs on a batch.
        y: (B, C) labels.
        hparams: the loss weights ``lambda_*`` (defaults: :data:`RECIPE`).

    Returns:
        ``pred_final``, ``pred_ehr``, ``pred_cxr``, ``pred_shared``, ``jsd``, ``ehr_distinct``,
        ``cxr_distinct``, ``attn_ranking`` and the weighted sum ``total``.
    """
    weights = {**RECIPE, **hparams}
    paired = outputs["has_cxr"].to(y.dtype)
    everyone = torch.ones_like(paired)
    bce = {name: F.binary_cross_entropy_with_logits(outputs[name], y, reduction="none")
           for name in ("final", "ehr", "cxr", "shared")}
    terms = dict(
        pred_final=bce["final"].mean(),
        pred_ehr=bce["ehr"].mean(),
        pred_cxr=_masked_mean(bce["cxr"].mean(dim=1), paired),
        pred_shared=bce["shared"].mean(),
        jsd=jensen_shannon(outputs["feat_ehr_shared"], outputs["feat_cxr_shared"], paired),
        ehr_distinct=_masked_mean(F.cosine_similarity(
            outputs["feat_ehr_shared"], outputs["feat_ehr_distinct"]).abs(), everyone),
        cxr_distinct=_masked_mean(F.cosine_similarity(
            outputs["feat_cxr_shared"], outputs["feat_cxr_distinct"]).abs(), paired),
    )
    # which token's own prediction was better, per stay and label (no gradient through it)
    loss_of = {"ehr": bce["ehr"].detach(), "shared": bce["shared"].detach(),
               "cxr": bce["cxr"].detach()}
    weight_of = dict(zip(TOKENS, outputs["attention"].unbind(dim=-1), strict=True))
    terms["attn_ranking"] = sum(
        _ranking(loss_of[better] < loss_of[worse], weight_of[better], weight_of[worse], paired)
        for better, worse in (("cxr", "ehr"), ("shared", "ehr"), ("shared", "cxr"))) / 3
    terms["total"] = (
        terms["pred_final"]
        + weights["lambda_pred_shared"] * terms["pred_shared"]
        + weights["lambda_pred_ehr"] * terms["pred_ehr"]
        + weights["lambda_pred_cxr"] * terms["pred_cxr"]
        + weights["lambda_disentangle_shared"] * terms["jsd"]
        + weights["lambda_disentangle_ehr"] * terms["ehr_distinct"]
        + weights["lambda_disentangle_cxr"] * terms["cxr_distinct"]
        + weights["lambda_attn_aux"] * terms["attn_ranking"])
    return terms


def training_step(model: DrFuse, batch: Mapping[str, torch.Tensor],
                  optimizers: Sequence[torch.optim.Optimizer]) -> torch.Tensor:
    """All of DrFuse's losses summed (:meth:`DrFuse.losses`), one backward, one step of each
    optimizer (the harness's default: one Adam over every parameter). Returns the total."""
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    total = model.losses(batch)["total"]
    total.backward()
    for optimizer in optimizers:
        optimizer.step()
    return total.detach()


@hookimpl
def fusebench_register_methods() -> list[MethodSpec]:
    """``drfuse``."""
    return [
        MethodSpec(
            name="drfuse",
            description="Shared and distinct EHR (transformer) and CXR (ResNet-50) features, "
            "Jensen-Shannon-aligned shared ones fused by logit pooling, disease-wise attention "
            "over the three trained with a ranking loss; stays without CXR use EHR tokens only.",
            reference=REFERENCE,
            handles_missing_cxr=True,
            default_train_cohort="partial",
            hparams={"*": dict(RECIPE)},
            build=DrFuse,
            training_step=training_step,
        ),
    ]
