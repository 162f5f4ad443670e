"""Convert the authors' (VGen) checkpoints: ModelScopeT2V V1.5 UNet, DreamVideo identity/motion adapters.

VGen (github.com/ali-vilab/VGen, ``tools/modules/unet/unet_dreamvideo.py`` and ``util.py``) names its UNet
like the original ModelScope one: ``input_blocks.{n}.{0: ResBlock, 1: spatial transformer, 2: temporal
transformer}``, ``middle_block.{0..3}``, ``output_blocks.{n}.{...}``, ``time_embed``, ``out``; every ResBlock
carries its temporal conv as ``temopral_conv`` (sic) and the temporal transformers use 1x1 ``Conv1d``
projections where diffusers uses ``Linear``. Adapters sit in the transformer blocks as ``attn_adapter`` /
``cross_attn_adapter`` / ``ff_adapter`` with ``down_linear`` / ``up_linear`` / ``condition_linear``, and VGen
saves them as ``{"state_dict": ..., "step": ...}``.
"""

from __future__ import annotations

import argparse
import json
import pickle
import re
import shutil
from pathlib import Path
from typing import Any

import diffusers
import torch

from dreamvideo import adapters as ad
from dreamvideo.base import MODELSCOPE_UNET_CONFIG, describe_base
from dreamvideo.fileio import (
    DreamVideoError,
    load_safetensors,
    read_json,
    replace_dir,
    save_safetensors,
    write_json,
)


class CheckpointError(DreamVideoError):
    """A checkpoint that cannot be read, or does not fit the expected UNet."""


# diffusers ResnetBlock2D name -> VGen/ModelScope ResBlock name
RESNET_NAMES = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
TOP_LEVEL_NAMES = {
    "conv_in": "input_blocks.0.0",
    "transformer_in": "input_blocks.0.1",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
ADAPTER_SITES = {"attn_adapter": "attn1", "cross_attn_adapter": "attn2", "ff_adapter": "ff"}
ADAPTER_LINEARS = {"down_linear": "down", "up_linear": "up", "condition_linear": "cond"}
WRAPPER_PREFIXES = ("module.", "model.diffusion_model.", "diffusion_model.")
TORCH_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
# diffusers keys whose VGen counterpart is a 1x1 Conv1d weight (out, in, 1), not a Linear weight (out, in)
_CONV1D_KEY = re.compile(r"^(transformer_in|.*\.temp_attentions\.\d+)\.proj_(in|out)\.weight$")
_ADAPTER_KEY = re.compile(
    r"^(?P<block>.+\.transformer_blocks\.\d+)\.(?P<site>attn_adapter|cross_attn_adapter|ff_adapter)\."
    r"(?P<linear>down_linear|up_linear|condition_linear)\.(?P<param>weight|bias)$"
)


# ---------------------------------------------------------------------------------------------- UNet config


def full_unet_config(config: dict[str, Any] | None = None) -> dict[str, Any]:
    """The complete ``UNet3DConditionModel`` config (with defaults); ``None`` means ModelScopeT2V-1.7B."""
    return dict(_architecture(config)[0])


def _config_json(config: dict[str, Any] | None) -> str:
    config = {k: v for k, v in (config or MODELSCOPE_UNET_CONFIG).items() if not k.startswith("_")}
    return json.dumps(config, sort_keys=True)


def _empty_unet(config: dict[str, Any] | None):
    """The UNet architecture on the meta device: key names and shapes, no memory."""
    from diffusers import UNet3DConditionModel

    with torch.device("meta"):
        return UNet3DConditionModel.from_config(json.loads(_config_json(config)))


_ARCHITECTURES: dict[str, tuple[dict[str, Any], dict[str, torch.Size]]] = {}


def _architecture(config: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, torch.Size]]:
    """Full config and ``{diffusers_key: shape}`` of a UNet config, cached (ModelScope-1.7B takes ~1 s)."""
    key = _config_json(config)
    if key not in _ARCHITECTURES:
        unet = _empty_unet(config)
        full = {k: v for k, v in unet.config.items() if not k.startswith("_")}
        _ARCHITECTURES[key] = _ARCHITECTURES[_config_json(full)] = (
            full,
            {k: v.shape for k, v in unet.state_dict().items()},
        )
    return _ARCHITECTURES[key]


# ---------------------------------------------------------------------------------------------- key mapping


def diffusers_to_vgen_key(key: str, config: dict[str, Any]) -> str:
    """The VGen / ModelScope name of diffusers ``UNet3DConditionModel`` parameter ``key``.

    Args:
        key: a diffusers state-dict key, e.g. ``down_blocks.0.temp_convs.1.conv1.2.weight``.
        config: the UNet config (needs ``layers_per_block``, ``down_block_types``, ``up_block_types``).
    """
    for new, old in TOP_LEVEL_NAMES.items():
        if key.startswith(new + "."):
            return old + key[len(new) :]
    layers = int(config["layers_per_block"])
    up_attn = ["CrossAttn" in t for t in config["up_block_types"]]
    parts = key.split(".")
    if parts[0] == "mid_block":  # middle_block: 0 resnet (+temporal conv), 1 spatial, 2 temporal, 3 resnet
        kind, j, rest = parts[1], int(parts[2]), ".".join(parts[3:])
        slot = {"resnets": 3 * j, "temp_convs": 3 * j, "attentions": 1, "temp_attentions": 2}.get(kind)
        if slot is not None:
            return _inside(kind, f"middle_block.{slot}", rest)
    elif parts[0] in ("down_blocks", "up_blocks") and len(parts) > 4:
        b, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
        if kind == "downsamplers":  # "downsamplers.0.conv.weight" -> "input_blocks.{n}.op.weight"
            return f"input_blocks.{1 + b * (layers + 1) + layers}.op.{rest.removeprefix('conv.')}"
        if kind == "upsamplers":  # the last module of the block's last entry: after resnet (+ transformers)
            return f"output_blocks.{b * (layers + 1) + layers}.{3 if up_attn[b] else 1}.{rest}"
        entry = (
            f"input_blocks.{1 + b * (layers + 1) + j}"
            if parts[0] == "down_blocks"
            else f"output_blocks.{b * (layers + 1) + j}"
        )
        slot = {"resnets": 0, "temp_convs": 0, "attentions": 1, "temp_attentions": 2}.get(kind)
        if slot is not None:
            return _inside(kind, f"{entry}.{slot}", rest)
    raise CheckpointError(f"no VGen name known for diffusers key {key!r}")


def _inside(kind: str, module: str, rest: str) -> str:
    """Names inside one module: ResBlock renames, its temporal conv is its ``temopral_conv`` child."""
    if kind == "resnets":
        first, _, tail = rest.partition(".")
        return f"{module}.{RESNET_NAMES.get(first, first)}.{tail}"
    if kind == "temp_convs":
        return f"{module}.temopral_conv.{rest}"
    return f"{module}.{rest}"


def vgen_key_map(config: dict[str, Any] | None = None) -> dict[str, tuple[str, torch.Size]]:
    """``{vgen_key: (diffusers_key, diffusers_shape)}`` for every parameter of the UNet of ``config``."""
    config, shapes = _architecture(config)
    mapping: dict[str, tuple[str, torch.Size]] = {}
    for key, shape in shapes.items():
        old = diffusers_to_vgen_key(key, config)
        if old in mapping:
            raise AssertionError(f"two diffusers keys map to {old}: {mapping[old][0]} and {key}")
        mapping[old] = (key, shape)
    return mapping


def vgen_unet_to_diffusers(
    state_dict: dict[str, torch.Tensor], config: dict[str, Any] | None = None, source: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """Rename (and reshape) a VGen / ModelScope UNet state dict to diffusers ``UNet3DConditionModel`` keys.

    Args:
        state_dict: VGen keys (wrappers such as ``module.`` already stripped, see :func:`load_checkpoint`).
        config: the target UNet config; ``None`` means ModelScopeT2V-1.7B.
        source: what to call the input in error messages (usually its path).

    Every key must be known and every expected key present, with the expected shape (as ``strict=True``).
    """
    mapping = vgen_key_map(config)
    _check_keys(state_dict, mapping, source)
    out = {}
    for old, (new, shape) in mapping.items():
        tensor = state_dict[old]
        if _CONV1D_KEY.match(new) and tensor.ndim == 3 and tensor.shape[-1] == 1:
            tensor = tensor[:, :, 0]
        if tensor.shape != shape:
            raise CheckpointError(
                f"{source}: {old} has shape {tuple(tensor.shape)}, the UNet expects {tuple(shape)} for {new} "
                "(a different model size? pass the matching template/base)"
            )
        out[new] = tensor
    return out


def diffusers_unet_to_vgen(state_dict: dict[str, torch.Tensor], config: dict[str, Any] | None = None) -> dict:
    """The inverse of :func:`vgen_unet_to_diffusers` (VGen names, ``Conv1d``-shaped temporal projections)."""
    config = full_unet_config(config)
    out = {}
    for key, tensor in state_dict.items():
        if _CONV1D_KEY.match(key):
            tensor = tensor[:, :, None]
        out[diffusers_to_vgen_key(key, config)] = tensor
    return out


def _check_keys(state_dict: dict[str, Any], mapping: dict[str, Any], source: str) -> None:
    missing = [k for k in mapping if k not in state_dict]
    unexpected = [k for k in state_dict if k not in mapping]
    if not missing and not unexpected:
        return
    hint = ""
    if any("adapter" in k for k in unexpected):
        hint = " It contains adapter weights: convert those with `dreamvideo convert vgen-adapter`."
    raise CheckpointError(
        f"{source}: does not fit the UNet ({len(state_dict)} tensors given, {len(mapping)} expected): "
        f"{len(missing)} missing (e.g. {missing[:3]}), "
        f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}).{hint}"
    )


# ---------------------------------------------------------------------------------------------- loading


def load_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` or PyTorch (``.pth/.pt/.ckpt/.bin``) file, with no arbitrary unpickling.

    PyTorch files are read with ``torch.load(weights_only=True)``; a ``{"state_dict": ...}`` wrapper (VGen's
    ``{"state_dict": ..., "step": ...}``) and a common ``module.`` / ``model.diffusion_model.`` prefix are
    removed.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    if path.suffix == ".safetensors":
        return _strip_prefixes(load_safetensors(path)[0])
    if path.suffix not in TORCH_SUFFIXES:
        raise CheckpointError(
            f"{path}: unknown checkpoint type; expected .safetensors or {', '.join(TORCH_SUFFIXES)}"
        )
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(
            r"WeightsUnpickler error:\s*(.+?)(?: was not an allowed| Please|\n\n|$)", str(err), re.S
        )
        detail = " ".join(found.group(1).split()) if found else ""
        if "Unsupported global" in detail or "GLOBAL" in str(err):
            blocked = re.search(r"GLOBAL ([\w.]+)", str(err))
            what = detail.split("GLOBAL")[-1].strip() or (
                blocked.group(1) if blocked else "classes or functions"
            )
            raise CheckpointError(
                f"{path}: holds Python objects other than tensors ({what}) and is refused for safety "
                "(it is never unpickled); re-save its tensors as a plain dict or as safetensors"
            ) from err
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint ({detail or type(err).__name__})"
        ) from err
    except Exception as err:  # truncated zip, not a torch file, ...
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {err})"
        ) from err
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(data).__name__}")
    bad = [k for k, v in data.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} entries are not tensors (e.g. {bad[:3]})")
    return _strip_prefixes({k: v.detach() for k, v in data.items()})


def _strip_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    changed = True
    while changed and state_dict:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state_dict):
                state_dict = {k[len(prefix) :]: v for k, v in state_dict.items()}
                changed = True
    return state_dict


def _unet_config_of(base_dir: str | Path | None) -> dict[str, Any]:
    if base_dir is None:
        return full_unet_config(None)
    path = Path(base_dir) / "unet" / "config.json"
    return full_unet_config(read_json(path))


# ---------------------------------------------------------------------------------------------- base model


def convert_vgen_base(
    ckpt_path: str | Path,
    out_dir: str | Path,
    template_dir: str | Path | None = None,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a diffusers-layout base folder whose ``unet/`` holds a VGen / ModelScope UNet checkpoint.

    Args:
        ckpt_path: VGen UNet checkpoint, e.g. ``model_scope_v1-5_0632000.pth`` (ModelScopeT2V V1.5).
        out_dir: folder to create (``unet/config.json`` + ``unet/diffusion_pytorch_model.safetensors``).
        template_dir: a diffusers text-to-video folder (e.g. a ``damo-vilab/text-to-video-ms-1.7b``
            snapshot) whose other components (vae, text_encoder, tokenizer, scheduler, ...) are copied and
            whose ``unet/config.json`` gives the architecture; ``None`` writes only ``unet/`` for the
            ModelScopeT2V-1.7B architecture.
        dtype: cast the weights (e.g. ``torch.float16``); ``None`` keeps the checkpoint's dtype.
        overwrite: replace an existing ``out_dir``.
    """
    ckpt_path, out_dir = Path(ckpt_path), Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise CheckpointError(f"{out_dir}: already exists (pass overwrite / --overwrite to replace it)")
    if template_dir is not None and not (Path(template_dir) / "unet" / "config.json").is_file():
        raise CheckpointError(f"{template_dir}: not a diffusers base folder (no unet/config.json)")
    config = _unet_config_of(template_dir)
    tensors = vgen_unet_to_diffusers(load_checkpoint(ckpt_path), config, source=str(ckpt_path))
    if dtype is not None:
        tensors = {k: v.to(dtype) for k, v in tensors.items()}
    staging = out_dir.with_name(f".{out_dir.name}.converting")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        if template_dir is not None:
            for item in Path(template_dir).iterdir():
                if item.name == "unet" or item.name.startswith("."):
                    continue
                (shutil.copytree if item.is_dir() else shutil.copy2)(item, staging / item.name)
        write_json(
            {"_class_name": "UNet3DConditionModel", "_diffusers_version": diffusers.__version__} | config,
            staging / "unet" / "config.json",
        )
        save_safetensors(
            tensors,
            staging / "unet" / "diffusion_pytorch_model.safetensors",
            {"format": "pt", "converted_from": str(ckpt_path)},
        )
        replace_dir(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


# ---------------------------------------------------------------------------------------------- adapters


def vgen_adapters_to_dreamvideo(
    state_dict: dict[str, torch.Tensor],
    kind: str,
    config: dict[str, Any] | None = None,
    source: str = "checkpoint",
) -> tuple[dict[str, torch.Tensor], ad.AdapterConfig]:
    """Map VGen adapter tensors to dreamvideo's adapter layout and infer the matching :class:`AdapterConfig`.

    VGen ``input_blocks.1.1.transformer_blocks.0.cross_attn_adapter.down_linear.weight`` becomes
    ``down_blocks.0.attentions.0.transformer_blocks.0.attn2.down.weight``. Sites: ``attn_adapter`` ->
    ``attn1``, ``cross_attn_adapter`` -> ``attn2``, ``ff_adapter`` -> ``ff``; layers: ``down_linear`` /
    ``up_linear`` / ``condition_linear`` -> ``down`` / ``up`` / ``cond``.

    Args:
        state_dict: VGen adapter tensors (the ``state_dict`` of VGen's ``adapter_XXXXXXXX.pth``).
        kind: ``"identity"`` (spatial blocks) or ``"motion"`` (temporal blocks, ``transformer_in`` included).
        config: the UNet config; ``None`` means ModelScopeT2V-1.7B.
        source: what to call the input in error messages.
    """
    if kind not in ("identity", "motion"):
        raise CheckpointError(f"unknown adapter kind {kind!r}; use 'identity' or 'motion'")
    config = full_unet_config(config)
    mapping = vgen_key_map(config)
    other = [k for k in state_dict if not _ADAPTER_KEY.match(k)]
    if other or not state_dict:
        raise CheckpointError(
            f"{source}: expected only VGen adapter tensors "
            "(...transformer_blocks.N.{attn,cross_attn,ff}_adapter...), "
            f"found {len(other)} other keys (e.g. {other[:3]})"
            if other
            else f"{source}: holds no tensors"
        )
    tensors: dict[str, torch.Tensor] = {}
    widths: dict[str, int] = {}
    sites: dict[str, set[str]] = {}
    for key, tensor in state_dict.items():
        m = _ADAPTER_KEY.match(key)
        norm = mapping.get(f"{m['block']}.norm1.weight")
        if norm is None:
            raise CheckpointError(f"{source}: {key} names a transformer block this UNet does not have")
        block = norm[0].removesuffix(".norm1.weight")
        temporal = _is_temporal(block)
        if temporal != (kind == "motion"):
            raise CheckpointError(
                f"{source}: {key} is in a {'temporal' if temporal else 'spatial'} block, which does not fit "
                f"a {kind} adapter (try --kind {'motion' if temporal else 'identity'})"
            )
        site = ADAPTER_SITES[m["site"]]
        widths[block] = norm[1][0]
        sites.setdefault(block, set()).add(site)
        tensors[f"{block}.{site}.{ADAPTER_LINEARS[m['linear']]}.{m['param']}"] = tensor.detach().contiguous()
    adapter_config = _infer_adapter_config(tensors, widths, sites, kind, config, source)
    return tensors, adapter_config


def _infer_adapter_config(
    tensors: dict[str, torch.Tensor],
    widths: dict[str, int],
    sites: dict[str, set[str]],
    kind: str,
    config: dict[str, Any],
    source: str,
) -> ad.AdapterConfig:
    """Check that every adapter is complete and shaped as dreamvideo builds it; describe all in one config."""
    site_sets = {frozenset(s) for s in sites.values()}
    if len(site_sets) != 1:
        raise CheckpointError(
            f"{source}: blocks have adapters at different sites ({sorted(map(sorted, site_sets))})"
        )
    block_sites = tuple(s for s in ad.SITES if s in next(iter(site_sets)))
    ratios, cond_dims = set(), set()
    for block, dim in widths.items():
        for site in block_sites:
            p = f"{block}.{site}"
            has_cond = f"{p}.cond.weight" in tensors or f"{p}.cond.bias" in tensors
            names = ["down.weight", "down.bias", "up.weight", "up.bias"] + (
                ["cond.weight", "cond.bias"] * has_cond
            )
            lost = [f"{p}.{n}" for n in names if f"{p}.{n}" not in tensors]
            if lost:
                raise CheckpointError(f"{source}: adapter at {p} is incomplete, missing {lost}")
            hidden = tensors[f"{p}.down.weight"].shape[0]
            cond_dim = tensors[f"{p}.cond.weight"].shape[-1] if has_cond else None
            expected = {
                "down.weight": (hidden, dim),
                "down.bias": (hidden,),
                "up.weight": (dim, hidden),
                "up.bias": (dim,),
                "cond.weight": (dim, cond_dim),
                "cond.bias": (dim,),
            }
            for n in names:
                if tuple(tensors[f"{p}.{n}"].shape) != expected[n]:
                    raise CheckpointError(
                        f"{source}: {p}.{n} has shape {tuple(tensors[f'{p}.{n}'].shape)}, "
                        f"expected {expected[n]} (block width {dim})"
                    )
            ratios.add(hidden / dim)
            cond_dims.add(cond_dim)
    if len(ratios) != 1 or len(cond_dims) != 1:
        raise CheckpointError(
            f"{source}: adapters differ across blocks (bottleneck ratios {sorted(ratios)}, condition sizes "
            f"{sorted(cond_dims, key=str)}); dreamvideo adapters use one ratio and one condition size"
        )
    ratio = ratios.pop()
    if any(
        max(1, int(d * ratio)) != tensors[f"{b}.{block_sites[0]}.down.weight"].shape[0]
        for b, d in widths.items()
    ):
        raise CheckpointError(f"{source}: bottleneck widths are not block width x {ratio}")
    target = "temporal" if kind == "motion" else "spatial"
    every = [
        k.removesuffix(".norm1.weight")
        for k in _architecture(config)[1]
        if k.endswith(".norm1.weight")
        and ".transformer_blocks." in k
        and _is_temporal(k) == (kind == "motion")
    ]
    blocks = None if set(widths) == set(every) else [p for p in every if p in widths]
    # VGen's default adapter_position_list is all 'parallel' (the paper's); weights cannot tell otherwise.
    return ad.AdapterConfig(
        name=kind,
        target=target,
        sites=block_sites,
        hidden_ratio=ratio,
        condition_dim=cond_dims.pop(),
        placement="parallel",
        blocks=blocks,
    )


def _is_temporal(key: str) -> bool:
    return key.startswith("transformer_in.") or ".temp_attentions." in key


def dreamvideo_adapters_to_vgen(
    tensors: dict[str, torch.Tensor], config: dict[str, Any] | None = None
) -> dict:
    """The inverse of :func:`vgen_adapters_to_dreamvideo`: dreamvideo adapter tensors with VGen names."""
    config = full_unet_config(config)
    sites = {v: k for k, v in ADAPTER_SITES.items()}
    linears = {v: k for k, v in ADAPTER_LINEARS.items()}
    out = {}
    for key, tensor in tensors.items():
        block, site, linear, param = key.rsplit(".", 3)
        vgen_block = diffusers_to_vgen_key(f"{block}.norm1.weight", config).removesuffix(".norm1.weight")
        out[f"{vgen_block}.{sites[site]}.{linears[linear]}.{param}"] = tensor
    return out


def adapter_info(
    kind: str, adapter_config: ad.AdapterConfig, base: dict[str, Any], source: str
) -> dict[str, Any]:
    """The JSON written next to converted adapter tensors (``subject.json`` / ``motion.json``)."""
    return {
        "type": f"dreamvideo-{'subject' if kind == 'identity' else 'motion'}",
        "kind": kind,
        f"{kind}_adapter": adapter_config.to_dict(),
        "sites": list(adapter_config.sites),
        "hidden_ratio": adapter_config.hidden_ratio,
        "condition_dim": adapter_config.condition_dim,
        "base": base,
        "converted_from": source,
    }


def _embedding_vector(path: str | Path) -> torch.Tensor:
    """The one tensor of a learned-embedding file, flattened (a diffusers ``{token: (1, dim)}`` file works too)."""
    tensors = load_checkpoint(path)
    if len(tensors) != 1:
        raise CheckpointError(
            f"{path}: expected one embedding tensor, found {len(tensors)} ({', '.join(list(tensors)[:4])})"
        )
    vector = next(iter(tensors.values())).float()
    if vector.ndim > 2 or (vector.ndim == 2 and vector.shape[0] != 1):
        raise CheckpointError(
            f"{path}: expected an embedding of shape (dim,) or (1, dim), got {tuple(vector.shape)}"
        )
    return vector.reshape(-1)


def convert_vgen_adapters(
    ckpt_path: str | Path,
    out_dir: str | Path,
    kind: str,
    base_dir: str | Path | None = None,
    overwrite: bool = False,
    embedding: str | Path | None = None,
    token: str = "<sks>",
) -> Path:
    """Convert a VGen DreamVideo adapter checkpoint (``adapter_XXXXXXXX.pth``) to dreamvideo's adapter files.

    Writes ``identity_adapter.safetensors`` + ``subject.json`` (``kind="identity"``) or
    ``motion_adapter.safetensors`` + ``motion.json`` (``kind="motion"``) into ``out_dir``; with ``embedding``
    (the learned word's vector, one tensor of shape (dim,) or (1, dim)) also ``learned_embeds.safetensors`` for
    ``token``. A subject without it loads as an identity adapter alone (prompt with the class word).

    Args:
        ckpt_path: VGen adapter checkpoint (``.pth``, or ``.safetensors`` with VGen key names).
        out_dir: folder to create.
        kind: ``"identity"`` or ``"motion"``.
        base_dir: diffusers base folder the adapter is for (its ``unet/config.json`` and text width);
            ``None`` means ModelScopeT2V-1.7B / V1.5.
        overwrite: replace an existing ``out_dir``.
        embedding: file holding the learned token embedding (safetensors, or a weights-only ``.pth``).
        token: the placeholder word the embedding is saved under.
    """
    ckpt_path, out_dir = Path(ckpt_path), Path(out_dir)
    if embedding is not None and kind != "identity":
        raise CheckpointError("--embedding goes with --kind identity (a subject's learned word)")
    vector = _embedding_vector(embedding) if embedding is not None else None
    if out_dir.exists() and not overwrite:
        raise CheckpointError(f"{out_dir}: already exists (pass overwrite / --overwrite to replace it)")
    config = _unet_config_of(base_dir)
    tensors, adapter_config = vgen_adapters_to_dreamvideo(
        load_checkpoint(ckpt_path), kind, config, str(ckpt_path)
    )
    text_width = config["cross_attention_dim"]
    if base_dir is not None and (Path(base_dir) / "text_encoder" / "config.json").is_file():
        text_width = read_json(Path(base_dir) / "text_encoder" / "config.json").get("hidden_size", text_width)
    name = Path(base_dir).name if base_dir is not None else "ModelScopeT2V V1.5 (VGen)"
    base = describe_base(name, config, int(text_width))
    staging = out_dir.with_name(f".{out_dir.name}.converting")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        stem, info_file = (
            ("identity_adapter", "subject.json") if kind == "identity" else ("motion_adapter", "motion.json")
        )
        save_safetensors(
            tensors,
            staging / f"{stem}.safetensors",
            {"adapter": adapter_config.to_dict(), "converted_from": str(ckpt_path)},
        )
        info = adapter_info(kind, adapter_config, base, str(ckpt_path))
        if kind == "identity":
            info["token"] = None if vector is None else token
        if vector is not None:
            if vector.numel() != int(text_width):
                raise CheckpointError(
                    f"{embedding}: embedding width {vector.numel()}, the base's text width {text_width}"
                )
            save_safetensors({token: vector.reshape(1, -1)}, staging / "learned_embeds.safetensors")
        write_json(info, staging / info_file)
        replace_dir(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


# ---------------------------------------------------------------------------------------------- CLI


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert", help="convert the authors' (VGen) checkpoints to dreamvideo's layout"
    )
    sub = parser.add_subparsers(dest="convert_command", required=True)

    p = sub.add_parser("vgen-base", help="VGen / ModelScope UNet checkpoint -> diffusers base folder")
    p.add_argument("--ckpt", required=True, help="VGen UNet checkpoint, e.g. model_scope_v1-5_0632000.pth")
    p.add_argument(
        "--template",
        required=True,
        help="diffusers base folder to copy the other components from (text-to-video-ms-1.7b snapshot)",
    )
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--dtype", choices=("keep", "fp16", "bf16", "fp32"), default="keep", help="weight dtype")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.set_defaults(func=_run_base)

    p = sub.add_parser(
        "vgen-adapter", help="VGen DreamVideo identity/motion adapter -> dreamvideo adapter files"
    )
    p.add_argument("--ckpt", required=True, help="VGen adapter checkpoint (checkpoints/adapter_XXXXXXXX.pth)")
    p.add_argument("--kind", required=True, choices=("identity", "motion"))
    p.add_argument(
        "--embedding", help="the subject's learned word embedding (one tensor), for --kind identity"
    )
    p.add_argument("--token", default="<sks>", help="placeholder word of --embedding (default <sks>)")
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument(
        "--base", default=None, help="diffusers base folder the adapter is for (default: ModelScope-1.7B)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.set_defaults(func=_run_adapter)


def _run_base(args: argparse.Namespace) -> int:
    dtype = {"keep": None, "fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    out = convert_vgen_base(args.ckpt, args.out, args.template, dtype=dtype, overwrite=args.overwrite)
    print(f"wrote {out}")
    return 0


def _run_adapter(args: argparse.Namespace) -> int:
    out = convert_vgen_adapters(
        args.ckpt,
        args.out,
        args.kind,
        base_dir=args.base,
        overwrite=args.overwrite,
        embedding=args.embedding,
        token=args.token,
    )
    print(f"wrote {out}")
    return 0
