"""Spike2Former meta-architecture: Meta-SpikeFormer -> pixel decoder (SDTE + FPN) -> SDTD -> SDME."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

from ..backbones.meta_spikeformer import MetaSpikeFormer
from ..base import SegmentationModel
from ..layers import model_neuron
from ..postprocess import panoptic_inference, resize_masks, semantic_labels
from .pixel_decoder import SpikePixelDecoder
from .sdme import SDME
from .transformer_decoder import SpikeTransformerDecoder

__all__ = ["Spike2Former"]



class Spike2Former(SegmentationModel):
    """Spike2Former (Lei et al., AAAI 2025), as the official code builds it.

    :param num_classes: K; the class head predicts K + 1 (the last is "no object").
    :param T: time steps; the image is replicated over T and NI-LIF integrates across them.
    :param D: NI-LIF's largest count; ``neuron``/``beta`` choose the neuron (paper Table 3).
    :param official: the released code's numerics: its neuron (D=8, no leak, reset not
        detached), T folded into the batch, and its three raw reshapes (pixel decoder and decoder FFNs),
        so that checkpoints trained with the official code give the official outputs.
    :param task: 'semantic' or 'panoptic' (then ``thing_classes`` flags the thing classes).
    Widths and depths default to the paper's ADE20K model (34,361,112 parameters);
    the ablation switches are those of the paper's Table 3.

    ``model.execution.mask_order`` (:data:`zoo.execution.MASK_ORDERS`): 'features_first' computes the mask
    features ``P = W x + b`` (the pixel decoder's last 1x1 conv) and then ``e P``, as the paper
    and the released code do; 'auto' (default) computes ``(e W) x + e b`` instead when that is
    cheaper: in inference (100 queries < 256 channels) it saves the 256 x 256 conv at 1/2 scale,
    4.3 GMACs at 512x512; in training (7 x 100 query states) a quarter of that chain's forward
    and backward, and the 1/2-scale map ``P`` saved for backward. Both give the same logits and
    gradients up to fp32 rounding. ``zoo.spike_driven_mode`` and ``analysis.energy`` run
    'features_first', so that the conv is counted as the paper defines it.
    """

    family = "mask_classification"

    @property
    def has_me_shortcut(self) -> bool:
        return self.sdme.me_shortcut

    def __init__(self, num_classes: int, T: int = 1, D: int = 4, neuron: str = "nilif", beta: float = 0.25,
                 official: bool = False, task: str = "semantic",
                 thing_classes: Optional[Sequence[bool]] = None,
                 embed_dims: Sequence[int] = (64, 128, 256, 360), backbone_heads: int = 8,
                 backbone_depths: Sequence[int] = (6, 2), feat_channels: int = 256,
                 encoder_layers: int = 6, sdte_ffn_channels: int = 1024, sdda_groups: int = 32,
                 decoder_layers: int = 6, decoder_heads: int = 8, decoder_ffn_channels: int = 2048,
                 num_queries: int = 100, use_sdte: bool = True, spike_query: bool = False,
                 multi_scale_queries: bool = False, me_shortcut: bool = True, shortcut_conv: bool = True):
        super().__init__(T=T, official=official)
        if task not in ("semantic", "panoptic"):
            raise ValueError(f"task must be 'semantic' or 'panoptic', got {task!r}")
        if task == "panoptic" and (thing_classes is None or len(thing_classes) != num_classes):
            raise ValueError("a panoptic model needs thing_classes: one flag per class")
        self.num_classes, self.task = num_classes, task
        self.thing_classes = tuple(bool(t) for t in thing_classes) if thing_classes is not None else None
        sn = model_neuron("official" if official else neuron, D=D, beta=beta)
        self.backbone = MetaSpikeFormer(embed_dims=tuple(embed_dims), num_heads=backbone_heads,
                                        depths=tuple(backbone_depths), neuron=sn)
        self.pixel_decoder = SpikePixelDecoder(
            in_channels=self.backbone.out_channels, feat_channels=feat_channels,
            num_encoder_layers=encoder_layers, ffn_channels=sdte_ffn_channels, groups=sdda_groups,
            neuron=sn, official=official, use_sdte=use_sdte, spike_query=spike_query,
            multi_scale_queries=multi_scale_queries)
        self.transformer_decoder = SpikeTransformerDecoder(
            dim=feat_channels, num_heads=decoder_heads, num_layers=decoder_layers,
            ffn_channels=decoder_ffn_channels, num_queries=num_queries, neuron=sn, official=official)
        self.sdme = SDME(dim=feat_channels, num_queries=num_queries, num_classes=num_classes, neuron=sn,
                         me_shortcut=me_shortcut, shortcut_conv=shortcut_conv)

    def _projection_last(self, all_layers: bool) -> bool:
        """Whether this forward multiplies the mask embeddings into the mask-feature conv first."""
        if self.execution.mask_order == "features_first":
            return False
        conv = self.pixel_decoder.mask_feature.conv
        states = 1 + len(self.transformer_decoder.layers) if all_layers else 1
        return SDME.projection_first_is_cheaper(states, self.sdme.num_queries, conv.out_channels, conv.in_channels)

    def _predict_raw(self, images: torch.Tensor, all_layers: bool
                     ) -> Tuple[torch.Tensor, torch.Tensor, Tuple[int, int], Tuple[int, int]]:
        with self.computing():
            x, image_size = self.to_sequence(images)
            class_logits, mask_logits = self.run_network(Spike2Former._network, x, all_layers)
        return self.returned(class_logits), self.returned(mask_logits), tuple(x.shape[-2:]), image_size

    def _network(self, x: torch.Tensor, all_layers: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        features = self.backbone(x)
        projection_last = self._projection_last(all_layers)
        mask_features, multi_scale = self.pixel_decoder(features, project_mask_features=not projection_last)
        states = self.transformer_decoder(multi_scale)
        projection = self.pixel_decoder.mask_feature.conv if projection_last else None
        class_logits, mask_logits = self.sdme(states, mask_features, last_only=not all_layers,
                                              feature_projection=projection)
        return self.time_mean(class_logits, 1), self.time_mean(mask_logits, 1)

    def forward(self, images: torch.Tensor, all_layers: Optional[bool] = None) -> Dict[str, torch.Tensor]:
        """Class and mask logits of every query state.

        Returns ``{"pred_logits": [L, B, Q, K+1], "pred_masks": [L, B, Q, Hp/2, Wp/2]}`` with
        L = 7 (initial queries + 6 layers) in training; in eval mode only the last state
        (L = 1) unless ``all_layers=True``. Masks are at half the padded input size.
        """
        all_layers = self.training if all_layers is None else all_layers
        class_logits, mask_logits, _, _ = self._predict_raw(images, all_layers)
        return {"pred_logits": class_logits, "pred_masks": mask_logits}

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> Union[torch.Tensor, List[Tuple[torch.Tensor, List[Dict]]]]:
        """Semantic: label maps [B, H, W] (int64). Panoptic: per image ``(segment_ids [H, W], segments)``."""
        class_logits, mask_logits, padded, size = self._predict_raw(images, all_layers=False)
        class_logits, masks = class_logits[-1], resize_masks(mask_logits[-1], padded, size)
        if self.task == "semantic":
            return semantic_labels(class_logits, masks)
        return [panoptic_inference(c, m, self.thing_classes) for c, m in zip(class_logits, masks)]
