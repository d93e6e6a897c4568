"""Object detection with a plain ViT: YOLOS (Fang et al. 2021) trained with DETR's set loss (Carion et al. 2020).

One box and class per object instead of one label per image. YOLOS changes a ViT in one place:
``Q`` learned *detection tokens* (each with its own learned position) are appended to the patch
tokens, and after the encoder each detection token predicts one object or "no object"::

    images (N, C, H, W) -> [class, P patches, Q det tokens] -> encoder -> det tokens (N, Q, D)
        -> class MLP (N, Q, K + 1)  (the last class is "no object")
        -> box MLP + sigmoid (N, Q, 4)  (cx, cy, w, h as fractions of the image)

Training needs to know which token should predict which object: DETR's *Hungarian matching* finds
the one-to-one assignment of tokens to the ``m <= Q`` objects with the lowest total cost (class
probability, L1 distance of the boxes, generalized IoU; :func:`hungarian_match` with
``scipy.optimize.linear_sum_assignment``). Matched tokens learn their object's class and box;
every other token learns "no object", whose cross-entropy is down-weighted (``eos_coef``) since
most tokens are empty (:class:`SetCriterion`).

Metric: COCO's mean average precision, mAP@0.5 and mAP@[.5:.95], from torchmetrics (pycocotools
underneath); :func:`average_precision` is the hand version the lesson builds and the tests compare.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torchvision.ops import box_convert, box_iou, generalized_box_iou

from ..core.configs import ConfigError
from ..layers.encoder import init_transformer_weights
from .registry import register_model
from .segmentation import CANVAS_ENCODER, encoder_config, encoder_no_weight_decay
from .vit import ViT, ViTConfig

__all__ = ["YOLOSConfig", "YOLOS", "DetectionOutput", "hungarian_match", "SetCriterion", "postprocess",
           "targets_from_canvas", "average_precision", "DetectionMetrics"]


@dataclass
class YOLOSConfig(ViTConfig):
    """A ViT encoder (:class:`~vitlab.model.ViTConfig` fields; ``num_classes`` object classes, without
    "no object") and ``num_det_tokens`` detection tokens: the most objects one image can hold."""

    image_size: int = 56
    patch_size: int = 7
    num_classes: int = 10
    num_det_tokens: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_classes < 1 or self.num_det_tokens < 1:
            raise ConfigError(f"YOLOS needs num_classes >= 1 and num_det_tokens >= 1, got {self.num_classes}, "
                              f"{self.num_det_tokens}")


class DetectionOutput(NamedTuple):
    """``logits (N, Q, K + 1)`` (last: no object), ``boxes (N, Q, 4)`` normalized ``(cx, cy, w, h)``."""

    logits: Tensor
    boxes: Tensor


class _MLP(nn.Module):
    """DETR's prediction MLP: ``layers`` linear layers with ReLU between. ``(..., D) -> (..., out)``."""

    def __init__(self, dim: int, out: int, layers: int = 3) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(dim, dim if i < layers - 1 else out) for i in range(layers))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class YOLOS(nn.Module):
    """A ViT with detection tokens. Shapes: ``(N, C, H, W) -> DetectionOutput(logits (N, Q, K + 1),
    boxes (N, Q, 4))``."""

    family = "yolos"
    task = "detect"
    config_class = YOLOSConfig
    has_attention_maps = False

    def __init__(self, config: YOLOSConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        config = dataclasses.replace(config or YOLOSConfig(), **overrides)
        self.config = config
        self.encoder = ViT(encoder_config(config))
        self.det_tokens = nn.Parameter(torch.zeros(1, config.num_det_tokens, config.dim))
        self.det_pos = nn.Parameter(torch.zeros(1, config.num_det_tokens, config.dim))
        self.class_head = _MLP(config.dim, config.num_classes + 1)
        self.box_head = _MLP(config.dim, 4)
        self.class_head.apply(init_transformer_weights)
        self.box_head.apply(init_transformer_weights)
        nn.init.trunc_normal_(self.det_tokens, std=0.02)
        nn.init.trunc_normal_(self.det_pos, std=0.02)

    def no_weight_decay(self) -> set[str]:
        """The encoder's class token and position table, and the detection tokens and their positions."""
        return encoder_no_weight_decay(self.encoder) | {"det_tokens", "det_pos"}

    def gradcam_layer(self, layer: int = -1) -> nn.Module:
        return self.encoder.gradcam_layer(layer)

    def forward_features(self, images: Tensor) -> Tensor:
        """The detection tokens after the encoder. ``(N, C, H, W) -> (N, Q, D)``."""
        x = self.encoder.tokens(images)                                                 # (N, 1 + P, D)
        det = (self.det_tokens + self.det_pos).expand(x.shape[0], -1, -1)
        x = torch.cat([x, det], dim=1)                                                  # (N, 1 + P + Q, D)
        for block in self.encoder.blocks:
            x = block(x)
        return self.encoder.norm(x[:, -self.config.num_det_tokens:])

    def forward(self, images: Tensor) -> DetectionOutput:
        tokens = self.forward_features(images)
        # The sigmoid in fp32: under bf16 autocast a box would move in steps of about 1/256 of the image.
        return DetectionOutput(self.class_head(tokens), self.box_head(tokens).float().sigmoid())


def targets_from_canvas(boxes: Tensor, labels: Tensor, image_size: int) -> list[dict[str, Tensor]]:
    """Padded canvas objects to DETR's targets. ``boxes (N, M, 4)`` xyxy pixels, ``labels (N, M)`` (-1 =
    none) -> one ``{"labels": (m,), "boxes": (m, 4)}`` per image, boxes as normalized ``(cx, cy, w, h)``."""
    targets = []
    for image_boxes, image_labels in zip(boxes, labels):
        keep = image_labels >= 0
        targets.append({"labels": image_labels[keep],
                        "boxes": box_convert(image_boxes[keep] / image_size, "xyxy", "cxcywh")})
    return targets


@torch.no_grad()
def hungarian_match(output: DetectionOutput, targets: list[dict[str, Tensor]], cost_class: float = 1.0,
                    cost_bbox: float = 5.0, cost_giou: float = 2.0) -> list[tuple[Tensor, Tensor]]:
    """DETR's matcher: per image, the one-to-one assignment of detection tokens to objects of least cost.

    ``cost[q, j] = -cost_class * p_q(class_j) + cost_bbox * |box_q - box_j|_1 - cost_giou * GIoU(box_q, box_j)``
    (``Q x m``), minimized exactly by ``scipy.optimize.linear_sum_assignment``. Returns one pair
    ``(token indices (m,), object indices (m,))`` per image.
    """
    matches = []
    for logits, boxes, target in zip(output.logits, output.boxes, targets):
        if not len(target["labels"]):
            empty = torch.zeros(0, dtype=torch.int64)
            matches.append((empty, empty))
            continue
        probs = logits.float().softmax(-1)                                                  # (Q, K + 1)
        cost = (-cost_class * probs[:, target["labels"]]
                + cost_bbox * torch.cdist(boxes.float(), target["boxes"].float(), p=1)
                - cost_giou * generalized_box_iou(box_convert(boxes.float(), "cxcywh", "xyxy"),
                                                  box_convert(target["boxes"].float(), "cxcywh", "xyxy")))
        rows, cols = linear_sum_assignment(cost.cpu().numpy())
        matches.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
    return matches


class SetCriterion(nn.Module):
    """DETR's set loss: match (:func:`hungarian_match`), then

    ``loss = w_class * CE(all tokens; unmatched -> no object, weighted eos_coef)
    + w_bbox * L1(matched boxes) + w_giou * (1 - GIoU(matched boxes))``,

    the box terms summed over matched pairs and divided by the number of objects in the batch (the
    same, unless an image has more objects than tokens).
    ``forward(output, targets) -> (loss (), {"loss_class", "loss_bbox", "loss_giou"} floats)``.
    """

    def __init__(self, num_classes: int, eos_coef: float = 0.1, weight_class: float = 1.0, weight_bbox: float = 5.0,
                 weight_giou: float = 2.0) -> None:
        super().__init__()
        if not 0 < eos_coef <= 1:
            raise ValueError(f"eos_coef (the no-object weight) must be in (0, 1], got {eos_coef}")
        self.num_classes = num_classes
        self.weights = (weight_class, weight_bbox, weight_giou)
        class_weight = torch.ones(num_classes + 1)
        class_weight[-1] = eos_coef
        self.register_buffer("class_weight", class_weight)

    def forward(self, output: DetectionOutput, targets: list[dict[str, Tensor]]) -> tuple[Tensor, dict[str, float]]:
        matches = hungarian_match(output, targets, *self.weights)
        logits, boxes = output.logits.float(), output.boxes.float()
        device = logits.device
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=device)
        image_idx = torch.cat([torch.full_like(rows, i) for i, (rows, _) in enumerate(matches)]).to(device)
        token_idx = torch.cat([rows for rows, _ in matches]).to(device)
        target_classes[image_idx, token_idx] = torch.cat(
            [t["labels"].to(device)[cols.to(device)] for t, (_, cols) in zip(targets, matches)]).long()
        # (N*Q, K+1) rows: cross_entropy on (N, K+1, Q) runs nll_loss2d, whose class-weighted reduction is
        # nondeterministic on CUDA (atomic adds); the rows give the same weighted mean deterministically.
        loss_class = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target_classes.reshape(-1),
                                     self.class_weight)
        matched = boxes[image_idx, token_idx]                                               # (n, 4)
        wanted = torch.cat([t["boxes"].to(device)[cols.to(device)] for t, (_, cols) in zip(targets, matches)]).float()
        num_boxes = max(sum(len(t["labels"]) for t in targets), 1)  # DETR: every object, matched or not
        loss_bbox = F.l1_loss(matched, wanted, reduction="sum") / num_boxes
        giou = torch.diag(generalized_box_iou(box_convert(matched, "cxcywh", "xyxy"),
                                              box_convert(wanted, "cxcywh", "xyxy"))) if len(wanted) else matched[:0, 0]
        loss_giou = (1 - giou).sum() / num_boxes
        w_class, w_bbox, w_giou = self.weights
        loss = w_class * loss_class + w_bbox * loss_bbox + w_giou * loss_giou
        return loss, {"loss_class": loss_class.item(), "loss_bbox": loss_bbox.item(), "loss_giou": loss_giou.item()}


@torch.no_grad()
def postprocess(output: DetectionOutput, image_size: int, score_threshold: float = 0.0) -> list[dict[str, Tensor]]:
    """Detections per image: every token's best object class and its probability, boxes in pixels.

    -> one ``{"boxes": (q, 4) xyxy pixels, "scores": (q,), "labels": (q,)}`` per image, keeping tokens
    whose score is ``>= score_threshold`` (0 keeps all, as mAP wants: it ranks them by score).
    """
    probs = output.logits.float().softmax(-1)[..., :-1]                                   # no-object dropped
    scores, labels = probs.max(-1)
    boxes = box_convert(output.boxes.float(), "cxcywh", "xyxy").clamp(0, 1) * image_size
    results = []
    for image_scores, image_labels, image_boxes in zip(scores, labels, boxes):
        keep = image_scores >= score_threshold
        results.append({"boxes": image_boxes[keep].cpu(), "scores": image_scores[keep].cpu(),
                        "labels": image_labels[keep].cpu()})
    return results


def average_precision(predictions: list[dict[str, Tensor]], targets: list[dict[str, Tensor]], label: int,
                      iou_threshold: float = 0.5) -> float:
    """COCO's average precision of one class at one IoU threshold, by hand (what lesson 16 teaches).

    Rank every prediction of class ``label`` over all images by score; walking down the ranking, a
    prediction is a true positive if it overlaps a not-yet-matched object of that class in its image
    with IoU >= ``iou_threshold`` (the best such object), else a false positive. Precision is made
    non-increasing from the right, then read at the 101 recalls 0, 0.01, ..., 1 (0 past the last
    recall reached) and averaged. ``predictions``: ``{"boxes" xyxy, "scores", "labels"}`` per image;
    ``targets``: ``{"boxes" xyxy, "labels"}``. NaN when the class has no object (COCO leaves it out).
    """
    ranked = []  # (score, image, box)
    for image, prediction in enumerate(predictions):
        for box, score, pred_label in zip(prediction["boxes"], prediction["scores"], prediction["labels"]):
            if int(pred_label) == label:
                ranked.append((float(score), image, box))
    ranked.sort(key=lambda item: -item[0])  # stable: ties keep image order, as pycocotools' mergesort
    objects = [t["boxes"][t["labels"] == label] for t in targets]
    total = sum(len(o) for o in objects)
    if total == 0:
        return float("nan")
    taken = [torch.zeros(len(o), dtype=torch.bool) for o in objects]
    hits = []
    for _, image, box in ranked:
        hit = False
        if len(objects[image]):
            ious = box_iou(box[None].double(), objects[image].double())[0]
            ious[taken[image]] = -1
            best = int(ious.argmax())
            if ious[best] >= iou_threshold:
                taken[image][best] = True
                hit = True
        hits.append(hit)
    tp = np.cumsum(hits)
    fp = np.cumsum([not h for h in hits])
    recall = tp / total
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    precision = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
    points = np.linspace(0, 1, 101)
    where = np.searchsorted(recall, points, side="left")
    return float(np.mean([precision[i] if i < len(precision) else 0.0 for i in where]))


class DetectionMetrics:
    """COCO mAP@[.5:.95], mAP@0.5, mAP@0.75 and per-class AP@[.5:.95], accumulated over batches
    (torchmetrics' ``MeanAveragePrecision``, pycocotools underneath).

    ``update(predictions, targets)`` with :func:`postprocess`'s dicts and ``{"boxes" xyxy pixels,
    "labels"}`` targets; ``compute()`` -> ``{"map", "map_50", "map_75", "per_class_ap" (list, NaN where a
    class has no object), "mar_10"}``.
    """

    def __init__(self, num_classes: int) -> None:
        from torchmetrics.detection import MeanAveragePrecision  # lazy: torchmetrics takes a second to import

        self.num_classes = num_classes
        # COCO's own thresholds, in float64: torchmetrics' defaults come from a float32 torch.linspace, and a
        # recall that equals a threshold exactly (29/100, say) can then fall on the other side of it.
        self._map = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", class_metrics=True,
                                         iou_thresholds=np.linspace(0.5, 0.95, 10).tolist(),
                                         rec_thresholds=np.linspace(0.0, 1.0, 101).tolist())

    def update(self, predictions: list[dict[str, Tensor]], targets: list[dict[str, Tensor]]) -> None:
        self._map.update([{k: v.detach().float().cpu() if k != "labels" else v.cpu() for k, v in p.items()}
                          for p in predictions],
                         [{"boxes": t["boxes"].float().cpu(), "labels": t["labels"].cpu()} for t in targets])

    def compute(self) -> dict[str, Any]:
        result = self._map.compute()
        per_class = [float("nan")] * self.num_classes
        classes = result["classes"].reshape(-1).tolist()
        for label, ap in zip(classes, result["map_per_class"].reshape(-1).tolist()):
            per_class[int(label)] = float("nan") if ap < 0 else ap
        return {"map": result["map"].item(), "map_50": result["map_50"].item(), "map_75": result["map_75"].item(),
                "mar_10": result["mar_10"].item(), "per_class_ap": per_class}


register_model("yolos_canvas", YOLOS, YOLOSConfig(**CANVAS_ENCODER, num_classes=10, num_det_tokens=10),
               recipe={"epochs": 16, "batch_size": 64, "lr": 1e-3, "weight_decay": 0.05, "warmup_epochs": 1.0,
                       "grad_clip": 0.1},
               description="YOLOS (10 detection tokens) for MNIST canvases (56x56, 10 digits)")
