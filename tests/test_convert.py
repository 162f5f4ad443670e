"""Converting VGen (the authors' code) UNet and adapter checkpoints to diffusers / dreamvideo layouts."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch
from diffusers import UNet3DConditionModel
from safetensors.torch import load_file, save_file

from dreamvideo import adapters as ad
from dreamvideo import cli
from dreamvideo.base import describe_base
from dreamvideo.convert import (
    CheckpointError,
    convert_vgen_adapters,
    convert_vgen_base,
    diffusers_unet_to_vgen,
    dreamvideo_adapters_to_vgen,
    full_unet_config,
    load_checkpoint,
    vgen_adapters_to_dreamvideo,
    vgen_key_map,
    vgen_unet_to_diffusers,
)
from dreamvideo.fileio import read_json

# Digests of the sorted "name:shape" lines of VGen's own UNetSD_DreamVideo
# (tools/modules/unet/unet_dreamvideo.py at ali-vilab/VGen 4014d1f, built on the meta device with the
# configs/dreamvideo/*.yaml UNet settings merged into tools/modules/config.py's cfg.UNet): the base model, and
# the adapter tensors of the subject (spatial 'cross_attention') and motion (temporal self/cross/feedforward,
# condition dim 1024) configs.
VGEN_BASE_DIGEST = (1480, "aae0e8d1df89a0cb")
VGEN_IDENTITY_DIGEST = (64, "972d800ee9d1f1b1")
VGEN_MOTION_DIGEST = (306, "1507465ea6a48a7f")


def digest(state_dict: dict[str, torch.Tensor]) -> tuple[int, str]:
    lines = sorted(f"{k}:{tuple(v.shape)}" for k, v in state_dict.items())
    return len(lines), hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def meta_modelscope() -> UNet3DConditionModel:
    with torch.device("meta"):
        return UNet3DConditionModel.from_config(full_unet_config(None))


def random_unet(base: Path, seed: int = 0) -> UNet3DConditionModel:
    unet = UNet3DConditionModel.from_pretrained(base / "unet")
    torch.manual_seed(seed)
    with torch.no_grad():  # zero-initialised layers would hide a wrong mapping
        for p in unet.parameters():
            p.copy_(0.1 * torch.randn_like(p))
    return unet.eval()


def run(unet: torch.nn.Module) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        return unet(
            torch.randn(1, 4, 3, 8, 8, generator=g), torch.tensor([7]), torch.randn(1, 5, 32, generator=g)
        ).sample


def test_mapping_gives_vgen_names_and_shapes_for_modelscope():
    vgen = diffusers_unet_to_vgen(meta_modelscope().state_dict())
    assert digest(vgen) == VGEN_BASE_DIGEST
    mapping = vgen_key_map(None)
    assert len(mapping) == 1480
    examples = {
        "time_embed.2.weight": "time_embedding.linear_2.weight",
        "input_blocks.0.1.proj_in.weight": "transformer_in.proj_in.weight",
        "input_blocks.1.0.in_layers.2.weight": "down_blocks.0.resnets.0.conv1.weight",
        "input_blocks.1.0.temopral_conv.conv1.2.weight": "down_blocks.0.temp_convs.0.conv1.2.weight",
        "input_blocks.3.op.weight": "down_blocks.0.downsamplers.0.conv.weight",
        "input_blocks.5.2.transformer_blocks.0.attn2.to_k.weight": (
            "down_blocks.1.temp_attentions.1.transformer_blocks.0.attn2.to_k.weight"
        ),
        "middle_block.3.emb_layers.1.weight": "mid_block.resnets.1.time_emb_proj.weight",
        "middle_block.0.temopral_conv.conv4.3.bias": "mid_block.temp_convs.0.conv4.3.bias",
        "output_blocks.2.1.conv.weight": "up_blocks.0.upsamplers.0.conv.weight",
        "output_blocks.5.3.conv.weight": "up_blocks.1.upsamplers.0.conv.weight",
        "output_blocks.11.1.transformer_blocks.0.ff.net.0.proj.weight": (
            "up_blocks.3.attentions.2.transformer_blocks.0.ff.net.0.proj.weight"
        ),
        "out.2.weight": "conv_out.weight",
    }
    for old, new in examples.items():
        assert mapping[old][0] == new
    assert vgen["input_blocks.0.1.proj_in.weight"].shape == (
        512,
        320,
        1,
    )  # VGen: 1x1 Conv1d, diffusers: Linear


def test_adapter_names_match_vgen_and_convert_to_dreamvideo_layout():
    for kind, config, expected in (
        ("identity", ad.identity_adapter_config(), VGEN_IDENTITY_DIGEST),
        ("motion", ad.motion_adapter_config(1024), VGEN_MOTION_DIGEST),
    ):
        unet = meta_modelscope()
        ad.attach_adapter(unet, config)
        ours = ad.adapter_state_dict(unet, kind)
        vgen = dreamvideo_adapters_to_vgen(ours)
        assert digest(vgen) == expected
        tensors, inferred = vgen_adapters_to_dreamvideo(vgen, kind)
        assert inferred.to_dict() == config.to_dict()
        assert tensors.keys() == ours.keys()
    tensors, _ = vgen_adapters_to_dreamvideo(vgen, "motion")
    assert "transformer_in.transformer_blocks.0.attn1.cond.weight" in tensors
    assert "up_blocks.3.temp_attentions.2.transformer_blocks.0.ff.up.bias" in tensors


def test_convert_base_end_to_end(tiny_base: Path, tmp_path: Path):
    unet = random_unet(tiny_base)
    vgen = diffusers_unet_to_vgen(unet.state_dict(), dict(unet.config))
    ckpt = tmp_path / "model_scope_v1-5.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in vgen.items()}, "step": 632000}, ckpt)

    out = convert_vgen_base(ckpt, tmp_path / "base", template_dir=tiny_base)
    for component in ("vae", "text_encoder", "tokenizer", "scheduler", "image_encoder"):
        assert (out / component).is_dir()
    converted = UNet3DConditionModel.from_config(UNet3DConditionModel.load_config(out / "unet"))
    converted.load_state_dict(load_file(out / "unet" / "diffusion_pytorch_model.safetensors"), strict=True)
    unet.eval()  # the temporal convolutions have dropout
    assert torch.equal(run(converted.eval()), run(unet))
    # the mapping is bit-exact (above); diffusers' loader may pick other kernels, so this one is to rounding
    torch.testing.assert_close(
        run(UNet3DConditionModel.from_pretrained(out / "unet").eval()), run(unet), atol=1e-6, rtol=0
    )

    with pytest.raises(CheckpointError, match="already exists"):
        convert_vgen_base(ckpt, out, template_dir=tiny_base)
    convert_vgen_base(ckpt, out, template_dir=tiny_base, dtype=torch.float16, overwrite=True)
    assert (
        load_file(out / "unet" / "diffusion_pytorch_model.safetensors")["conv_in.weight"].dtype
        == torch.float16
    )


def test_round_trip_and_mismatch_errors(tiny_base: Path):
    unet = random_unet(tiny_base)
    config = dict(unet.config)
    sd = unet.state_dict()
    vgen = diffusers_unet_to_vgen(sd, config)
    back = vgen_unet_to_diffusers(vgen, config)
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)

    missing = dict(vgen)
    del missing["middle_block.1.proj_in.bias"]
    with pytest.raises(
        CheckpointError, match=r"ckpt.pth: does not fit .* 1 missing .*middle_block.1.proj_in.bias"
    ):
        vgen_unet_to_diffusers(missing, config, source="ckpt.pth")
    extra = vgen | {
        "input_blocks.1.1.transformer_blocks.0.cross_attn_adapter.up_linear.bias": torch.zeros(32)
    }
    with pytest.raises(CheckpointError, match="1 unexpected.*vgen-adapter"):
        vgen_unet_to_diffusers(extra, config)
    wrong = vgen | {"out.2.weight": torch.zeros(4, 16, 3, 3)}
    with pytest.raises(CheckpointError, match=r"out.2.weight has shape \(4, 16, 3, 3\).*conv_out.weight"):
        vgen_unet_to_diffusers(wrong, config)
    with pytest.raises(
        CheckpointError, match="does not fit the UNet"
    ):  # a tiny checkpoint is not ModelScope-1.7B
        vgen_unet_to_diffusers(vgen, None)


class Exploit:
    """Unpickling this runs ``open(marker, "w")``: a stand-in for arbitrary code in a checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_loading_refuses_objects_and_non_tensors(tmp_path: Path):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {"a": torch.zeros(1)}, "payload": Exploit(marker)}, evil)
    with pytest.raises(CheckpointError, match="evil.pth: holds Python objects"):
        load_checkpoint(evil)
    assert not marker.exists()

    plain = tmp_path / "plain.pt"
    torch.save({"a": torch.zeros(2), "step": 3}, plain)
    with pytest.raises(CheckpointError, match=r"plain.pt: 1 entries are not tensors \(e.g. \['step'\]\)"):
        load_checkpoint(plain)
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.ckpt: not a readable PyTorch checkpoint"):
        load_checkpoint(tmp_path / "junk.ckpt")
    with pytest.raises(CheckpointError, match="unknown checkpoint type"):
        load_checkpoint(plain.rename(tmp_path / "weights.npz"))
    with pytest.raises(CheckpointError, match="file not found"):
        load_checkpoint(tmp_path / "nothing.pth")

    wrapped = tmp_path / "wrapped.pth"
    torch.save(
        {
            "state_dict": {"module.model.diffusion_model.x.weight": torch.nn.Parameter(torch.ones(2))},
            "step": 10,
        },
        wrapped,
    )
    loaded = load_checkpoint(wrapped)
    assert list(loaded) == ["x.weight"] and type(loaded["x.weight"]) is torch.Tensor


def motion_vgen_checkpoint(base: Path, tmp_path: Path) -> tuple[Path, UNet3DConditionModel, torch.Tensor]:
    unet = random_unet(base)
    torch.manual_seed(2)
    ad.attach_motion_adapter(unet, condition_dim=24)
    with torch.no_grad():
        for p in ad.adapter_parameters(unet, "motion"):
            p.copy_(0.1 * torch.randn_like(p))
    embeds = torch.randn(1, 24, generator=torch.Generator().manual_seed(3))
    ad.set_adapter_condition(unet, "motion", embeds)
    vgen = dreamvideo_adapters_to_vgen(ad.adapter_state_dict(unet, "motion"), dict(unet.config))
    ckpt = tmp_path / "adapter_00001500.pth"
    torch.save(
        {"state_dict": {f"module.{k}": torch.nn.Parameter(v) for k, v in vgen.items()}, "step": 1500}, ckpt
    )
    return ckpt, unet, embeds


def test_convert_motion_adapter_end_to_end(tiny_base: Path, tmp_path: Path):
    ckpt, adapted, embeds = motion_vgen_checkpoint(tiny_base, tmp_path)
    out = convert_vgen_adapters(ckpt, tmp_path / "motion", "motion", base_dir=tiny_base)
    info = read_json(out / "motion.json")
    assert info["kind"] == "motion" and info["converted_from"] == str(ckpt)
    config = ad.AdapterConfig.from_dict(info["motion_adapter"])
    assert config.to_dict() == ad.motion_adapter_config(24).to_dict()
    unet_config = dict(UNet3DConditionModel.load_config(tiny_base / "unet"))
    assert (
        info["base"]["architecture"] == describe_base("x", full_unet_config(unet_config), 32)["architecture"]
    )

    fresh = random_unet(tiny_base)  # same base weights, no adapter
    assert not torch.equal(run(fresh), run(adapted))
    ad.attach_adapter(fresh, config)
    ad.load_adapter_state_dict(fresh, "motion", load_file(out / "motion_adapter.safetensors"))
    ad.set_adapter_condition(fresh, "motion", embeds)
    assert torch.equal(run(fresh), run(adapted))

    with pytest.raises(CheckpointError, match="temporal block.*--kind motion"):
        convert_vgen_adapters(ckpt, tmp_path / "wrong", "identity", base_dir=tiny_base)
    with pytest.raises(CheckpointError, match="does not have"):  # tiny adapters vs the ModelScope-1.7B layout
        convert_vgen_adapters(ckpt, tmp_path / "wrong", "motion")
    assert not (tmp_path / "wrong").exists()


def _convert_identity(ckpt: Path, out: Path, *extra: str) -> list[str]:
    """``convert vgen-adapter`` of a VGen identity adapter checkpoint into the subject folder ``out``."""
    return ["convert", "vgen-adapter", "--ckpt", str(ckpt), "--kind", "identity", *extra, "--out", str(out)]


def test_identity_adapter_cli_and_adapter_errors(tiny_base: Path, tmp_path: Path, capsys):
    unet = meta_modelscope()
    ad.attach_identity_adapter(unet, blocks=["down_blocks.1", "mid_block"])
    vgen = dreamvideo_adapters_to_vgen(
        {k: torch.zeros(v.shape) for k, v in ad.adapter_state_dict(unet, "identity").items()}
    )
    assert len(vgen) == 3 * 4  # 2 down_blocks.1 blocks + the mid block, 4 tensors each
    ckpt = tmp_path / "adapter_00000500.pth"
    torch.save({"state_dict": vgen, "step": 500}, ckpt)
    assert cli.main(_convert_identity(ckpt, tmp_path / "subject")) == 0
    info = read_json(tmp_path / "subject" / "subject.json")
    assert info["identity_adapter"]["blocks"] == [
        "down_blocks.1.attentions.0.transformer_blocks.0",
        "down_blocks.1.attentions.1.transformer_blocks.0",
        "mid_block.attentions.0.transformer_blocks.0",
    ]
    assert info["sites"] == ["attn2"] and info["condition_dim"] is None
    assert len(load_file(tmp_path / "subject" / "identity_adapter.safetensors")) == 12

    key = "middle_block.1.transformer_blocks.0.cross_attn_adapter"
    incomplete = {k: v for k, v in vgen.items() if k != f"{key}.up_linear.bias"}
    with pytest.raises(CheckpointError, match=r"incomplete, missing \['mid_block.*attn2.up.bias'\]"):
        vgen_adapters_to_dreamvideo(incomplete, "identity")
    wrong = vgen | {f"{key}.up_linear.weight": torch.zeros(1280, 7)}
    with pytest.raises(
        CheckpointError, match=r"attn2.up.weight has shape \(1280, 7\), expected \(1280, 640\)"
    ):
        vgen_adapters_to_dreamvideo(wrong, "identity")
    with pytest.raises(CheckpointError, match="other keys"):
        vgen_adapters_to_dreamvideo(vgen | {"out.2.weight": torch.zeros(1)}, "identity")

    assert (
        cli.main(
            [
                "convert",
                "vgen-base",
                "--ckpt",
                str(tmp_path / "none.pth"),
                "--template",
                str(tiny_base),
                "--out",
                str(tmp_path / "b"),
            ]
        )
        == 2
    )
    assert "none.pth: file not found" in capsys.readouterr().err


class _SystemCall:
    def __reduce__(self):
        return os.system, ("echo pwned > /dev/null",)


def test_refused_pickle_says_python_objects_refused_for_safety(tmp_path: Path):
    evil = tmp_path / "system.pth"
    torch.save({"a": _SystemCall()}, evil)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(evil)
    message = str(info.value)
    assert "holds Python objects other than tensors" in message and "refused for safety" in message
    assert "system" in message and "unpickling failed" not in message


@pytest.mark.parametrize("with_embedding", [False, True])
def test_converted_identity_adapter_loads_and_generates(
    tiny_base: Path, tmp_path: Path, with_embedding: bool
):
    from dreamvideo.pipeline import DreamVideoPipeline

    pipe = DreamVideoPipeline.from_pretrained(str(tiny_base))
    ad.attach_identity_adapter(pipe.unet)
    state = {k: torch.randn(v.shape) * 0.1 for k, v in ad.adapter_state_dict(pipe.unet, "identity").items()}
    ad.detach_adapter(pipe.unet, "identity")
    ckpt = tmp_path / "adapter_00000500.pth"
    torch.save({"state_dict": dreamvideo_adapters_to_vgen(state, dict(pipe.unet.config))}, ckpt)
    args = _convert_identity(ckpt, tmp_path / "subject", "--base", str(tiny_base))
    if with_embedding:
        save_file({"emb": torch.randn(32)}, tmp_path / "emb.safetensors")
        args += ["--embedding", str(tmp_path / "emb.safetensors"), "--token", "<tok>"]
    assert cli.main(args) == 0
    token = pipe.load_subject(tmp_path / "subject")
    assert token == ("<tok>" if with_embedding else None)
    prompt = f"a {token} dog" if token else "a dog"
    frames = pipe(prompt, num_frames=2, num_inference_steps=2, progress=False).frames[0]
    assert frames.shape[0] == 2 and "identity" in ad.adapter_names(pipe.unet)
    loaded = ad.adapter_state_dict(pipe.unet, "identity")
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    out = tmp_path / ("gen.mp4")
    assert (
        cli.main(
            [
                "generate",
                "--base",
                str(tiny_base),
                "--subject",
                str(tmp_path / "subject"),
                "--prompt",
                prompt,
                "--frames",
                "2",
                "--steps",
                "1",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    assert out.is_file()
