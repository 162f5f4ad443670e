"""Adapter sites of diffusers' ``UNet3DConditionModel`` (ModelScopeT2V; method.md, sections 2 and 3).

- ``spatial`` blocks: the ``BasicTransformerBlock`` of every ``Transformer2DModel`` (``down_blocks.*.attentions``,
  ``mid_block.attentions``, ``up_blocks.*.attentions``): ``attn1`` self-attention, ``attn2`` cross-attention to
  the text, ``ff``. The identity adapter sits at ``attn2`` (16 blocks on ModelScope-1.7B).
- ``temporal`` blocks: the block of every ``TransformerTemporalModel`` (``transformer_in`` and
  ``*.temp_attentions``): ``attn1`` and ``attn2`` both self-attention over frames, ``ff``. The motion adapter sits
  at all three (17 blocks).

Every sub-layer has its own ``LayerNorm`` pre-norm: ``attn1`` <- ``norm1``, ``attn2`` <- ``norm2``, ``ff`` <-
``norm3``.
"""

from diffusers import UNet3DConditionModel
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel

from dreamvideo.adapters.sites.base import SiteMap, register

UNET3D = register(
    SiteMap(
        name="UNet3DConditionModel",
        model_types=(UNet3DConditionModel,),
        containers={"spatial": (Transformer2DModel,), "temporal": (TransformerTemporalModel,)},
        block_types=(BasicTransformerBlock,),
        sublayers={"attn1": "norm1", "attn2": "norm2", "ff": "norm3"},
    )
)
