"""Per-architecture adapter site maps: which blocks of a base model, and which of their sub-layers, adapters wrap.

One file per base architecture. Each defines a :class:`SiteMap` and passes it to :func:`register`; every module of
this package is imported here, so supporting another base is one new file, e.g. ``sites/mybase.py``::

    from dreamvideo.adapters.sites.base import SiteMap, register

    MYBASE = register(SiteMap(
        name="MyVideoUNet",
        model_types=(MyVideoUNet,),                       # the model classes it describes
        containers={"spatial": (MySpatialTransformer,),   # which transformers hold the blocks of each target
                    "temporal": (MyTemporalTransformer,)},
        block_types=(BasicTransformerBlock,),             # the pre-norm blocks inside them
        sublayers={"attn1": "norm1", "attn2": "norm2", "ff": "norm3"},  # site -> its pre-norm
    ))

A block qualifies when each adapted sub-layer computes ``h <- f(n(h)) + h`` (the block's ``norm_type`` is in
``norm_types``): the adapters then wrap ``f`` and ``n`` (see :mod:`dreamvideo.adapters.layer`) and never re-state
the block's forward. Subclass :class:`SiteMap` when finding the blocks needs more than ``containers``.
"""

import importlib
import pkgutil

from dreamvideo.adapters.sites.base import SiteMap, register, site_map_for

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["SiteMap", "register", "site_map_for"]
