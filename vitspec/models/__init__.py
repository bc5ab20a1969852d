"""The spec models: ``ViTSpec`` (mean pool), ``ViTClsSpec`` (CLS token), their gradient records
and the encoder layer they share (see ``docs/architecture.md``)."""

from .encoder import LayerCache, LayerOptions, LayerParams, encoder_layer, encoder_layer_backward
from .grads import EncoderLayerGrads, FFNGrads, MHAGrads, ViTClsGrads, ViTGrads
from .vit import MODES, ForwardCache, ViTBase, ViTClsSpec, ViTSpec, config_violations, load, spec_param_shapes

__all__ = [
    "MODES",
    "EncoderLayerGrads",
    "FFNGrads",
    "ForwardCache",
    "LayerCache",
    "LayerOptions",
    "LayerParams",
    "MHAGrads",
    "ViTBase",
    "ViTClsGrads",
    "ViTClsSpec",
    "ViTGrads",
    "ViTSpec",
    "config_violations",
    "encoder_layer",
    "encoder_layer_backward",
    "load",
    "spec_param_shapes",
]
