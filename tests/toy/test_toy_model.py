"""The toy base model: word-level tokenizer, tiny configs, the saved layout and the resumable pretraining script."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet3DConditionModel
from transformers import (
    CLIPImageProcessor,
    CLIPModel,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPTokenizerFast,
    CLIPVisionModelWithProjection,
)

from dreamvideo.fileio import load_safetensors, read_json
from dreamvideo.toy import world
from dreamvideo.toy.model import (
    MAX_LENGTH,
    TOY_MODEL_DIR,
    build_toy_tokenizer,
    clip_pixels,
    num_params,
    toy_clip,
    toy_feature_extractor,
    toy_scheduler,
    toy_unet,
    toy_vae,
    toy_vocabulary,
)
from dreamvideo.toy.pretrain import generate
from dreamvideo.toy.pretrain import main as pretrain_main
from dreamvideo.training import latest_checkpoint


@pytest.fixture(scope="module")
def tokenizer():
    return build_toy_tokenizer()


def test_vocabulary_covers_every_caption_word(tokenizer):
    vocab = set(toy_vocabulary())
    rng = np.random.default_rng(0)
    specs = [world.sample_pretraining_spec(rng) for _ in range(300)] + world.held_out_specs(n=32)
    for spec in specs:
        text = world.caption(spec)
        assert set(text.split()) <= vocab, text
        ids = tokenizer(text).input_ids
        assert len(ids) == len(text.split()) + 2  # one token a word, plus start and end
        assert len(ids) + 1 <= MAX_LENGTH  # room for a placeholder token
    assert tokenizer.unk_token_id not in tokenizer("a red star").input_ids[1:-1]  # CLIP: unk == end token


def test_tokenizer_saves_and_loads_slow_and_fast_alike(tmp_path, tokenizer):
    build_toy_tokenizer(tmp_path)
    assert (tmp_path / "merges.txt").read_text().startswith("#version: 0.2\n")
    vocab = json.loads((tmp_path / "vocab.json").read_text())
    assert {"a", "a</w>", "z", "z</w>", "star</w>", "<|startoftext|>", "<|endoftext|>"} <= set(vocab)
    slow, fast = CLIPTokenizer.from_pretrained(tmp_path), CLIPTokenizerFast.from_pretrained(tmp_path)
    texts = ["a red striped star bounces on green grass", "a zebra does a figure-eight", "", "A  RED star!"]
    assert slow(texts).input_ids == fast(texts).input_ids == tokenizer(texts).input_ids
    assert slow.model_max_length == MAX_LENGTH
    # unknown words fall back to characters, never to the unknown token
    pieces = fast.tokenize("zebra")
    assert len(pieces) > 1 and "".join(pieces) == "zebra</w>"
    # a placeholder token can be added and is then a single token
    before = len(fast)
    assert fast.add_tokens("<sks>") == 1 and len(fast) == before + 1
    ids = fast("a <sks> star moves up on blue sky").input_ids
    assert fast.convert_tokens_to_ids("<sks>") in ids and len(ids) == 10


def test_component_shapes_and_sizes(tokenizer):
    torch.manual_seed(0)
    unet, vae, clip = toy_unet().eval(), toy_vae().eval(), toy_clip(tokenizer).eval()
    total = (
        num_params(unet) + num_params(vae) + 2 * num_params(clip)
    )  # clip/ plus text_encoder/ + image_encoder/
    assert 4 * total < 30 * 2**20, total  # fp32 bytes, well under the 60 MB limit
    assert unet.config.cross_attention_dim == clip.config.text_config.hidden_size == 64
    assert clip.config.text_config.vocab_size == len(tokenizer)
    assert clip.config.text_config.max_position_embeddings == tokenizer.model_max_length
    with torch.no_grad():
        frames = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
        latents = vae.encode(frames.permute(0, 3, 1, 2).float() / 127.5 - 1).latent_dist.mode()
        assert latents.shape == (2, 4, 16, 16)
        assert vae.decode(latents).sample.shape == (2, 3, 64, 64)
        ids = tokenizer(["a red star", ""], padding="max_length", return_tensors="pt").input_ids
        text = clip.text_model(input_ids=ids).last_hidden_state
        assert text.shape == (2, MAX_LENGTH, 64)
        for num_frames in (8, 1):  # videos and images as 1-frame videos
            x = torch.randn(2, 4, num_frames, 16, 16)
            assert unet(x, torch.tensor([10, 900]), encoder_hidden_states=text).sample.shape == x.shape
    video = generate(
        unet, vae, clip.text_model, tokenizer, toy_scheduler(), ["a red star"], num_frames=2, steps=1
    )
    assert video.shape == (1, 2, 64, 64, 3) and video.dtype == np.uint8


def test_clip_pixels_match_the_feature_extractor():
    frames = world.render_clip(world.sample_pretraining_spec(np.random.default_rng(1))).frames[:3]
    expected = toy_feature_extractor()(images=list(frames), return_tensors="pt").pixel_values
    torch.testing.assert_close(clip_pixels(torch.from_numpy(frames)), expected, atol=1e-5, rtol=0)


def test_scheduler_has_modelscope_settings():
    config = toy_scheduler().config
    assert (config.beta_start, config.beta_end, config.beta_schedule) == (0.00085, 0.012, "scaled_linear")
    assert (config.num_train_timesteps, config.prediction_type, config.steps_offset) == (1000, "epsilon", 1)
    assert not config.clip_sample and not config.set_alpha_to_one


def warm_start_args(out, init="toy", steps=1, batch=1, extra=""):
    """``pretrain`` flags continuing a base's UNet for ``steps`` steps of ``batch`` clips (no previews)."""
    flags = f"--device cpu --workers 0 --unet-steps {steps} --unet-batch {batch} --preview-steps 0 {extra}"
    return ["--out", str(out), "--init-from", str(init), *flags.split()]


def phase_state(out, phase):
    """``trainer.json`` of a pretraining phase's newest checkpoint."""
    return read_json(latest_checkpoint(out / "checkpoints" / phase) / "trainer.json")


def test_pretrain_smoke_resume_and_saved_layout(tmp_path, capsys):
    out = tmp_path / "run"
    flags = (
        "--device cpu --workers 0 --clip-steps 1 --vae-steps 1 --unet-steps 3 --clip-batch 4 --vae-batch 2"
    )
    tiny = [
        "--out",
        str(out),
        *flags.split(),
        *"--unet-batch 1 --checkpoint-every 1 --preview-steps 0".split(),
    ]
    tiny += ["--image-prob", "1"]
    # a run stopped after 3 steps: CLIP and VAE done, the UNet (on 1-frame videos) checkpointed at its step 1
    assert pretrain_main([*tiny, "--max-steps", "3"]) == 0
    assert "continue with --resume" in capsys.readouterr().out
    assert not (out / "model").exists()
    clip_state, unet_state = phase_state(out, "clip"), phase_state(out, "unet")
    assert clip_state["step"] == clip_state["config"]["steps"] == 1  # done
    assert (unet_state["step"], unet_state["config"]["steps"]) == (1, 3)  # not done
    assert read_json(out / "checkpoints/vae_stats.json")["scaling_factor"] > 0
    # the same folder without --resume is refused
    assert pretrain_main(tiny) == 2
    # resume: finished phases are skipped, the UNet continues at step 1
    assert pretrain_main([*tiny, "--resume"]) == 0
    log = read_json(out / "train_log.json")
    assert log["phases"]["clip"]["losses"] == clip_state["losses"]
    unet_losses = log["phases"]["unet"]["losses"]
    assert unet_losses[:1] == unet_state["losses"] and len(unet_losses) == 3
    for name in ("loss_curve.png", "vae_reconstruction.png"):
        assert (out / name).stat().st_size > 0

    d = out / "model"
    index = read_json(d / "model_index.json")
    assert index["_class_name"] == "DreamVideoPipeline" and index["unet"] == [
        "diffusers",
        "UNet3DConditionModel",
    ]
    assert not [p for p in d.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    unet = UNet3DConditionModel.from_pretrained(d, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(d, subfolder="vae")
    assert vae.config.scaling_factor == log["phases"]["vae"]["scaling_factor"]
    assert DDIMScheduler.from_pretrained(d, subfolder="scheduler").config.steps_offset == 1
    # the saved UNet is the EMA of the training weights
    ckpt, _ = load_safetensors(latest_checkpoint(out / "checkpoints/unet") / "weights.safetensors")
    for i, (key, value) in enumerate(unet.named_parameters()):  # EMAModel's shadow parameters, in order
        torch.testing.assert_close(value, ckpt[f"ema.{i}"], atol=0, rtol=0)
        assert key in unet.state_dict()
    # text_encoder/ and image_encoder/ are exactly the towers of clip/
    clip = CLIPModel.from_pretrained(d / "clip").eval()
    text = CLIPTextModel.from_pretrained(d, subfolder="text_encoder").eval()
    image = CLIPVisionModelWithProjection.from_pretrained(d, subfolder="image_encoder").eval()
    tok = CLIPTokenizer.from_pretrained(d, subfolder="tokenizer")
    frames = world.render_clip(world.sample_pretraining_spec(np.random.default_rng(2))).frames[:2]
    pixels = CLIPImageProcessor.from_pretrained(d, subfolder="feature_extractor")(
        images=list(frames), return_tensors="pt"
    )
    ids = tok(["a red star moves up on blue sky"], padding="max_length", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(text(ids)[0], clip.text_model(input_ids=ids).last_hidden_state)
        expected = clip.visual_projection(clip.vision_model(pixel_values=pixels.pixel_values).pooler_output)
        torch.testing.assert_close(image(pixel_values=pixels.pixel_values).image_embeds, expected)
    assert image.config.projection_dim == 64


def test_pretrain_warm_start_keeps_clip_and_vae_and_continues_the_unet(tmp_path):
    from dreamvideo.toy.model import TOY_MODEL_DIR

    out = tmp_path / "more"
    # with frame-shared noise, so that this training path runs too
    # two steps: diffusers' warm-up gives the first one a learning rate of 0
    assert pretrain_main(warm_start_args(out, steps=2, extra="--shared-noise 0.5")) == 0
    log = read_json(out / "train_log.json")
    assert log["args"]["shared_noise"] == 0.5
    assert list(log["phases"]) == ["unet"] and len(log["phases"]["unet"]["losses"]) == 2
    for part in ("clip/model.safetensors", "vae/diffusion_pytorch_model.safetensors"):
        shipped, new = load_safetensors(TOY_MODEL_DIR / part)[0], load_safetensors(out / "model" / part)[0]
        assert shipped.keys() == new.keys() and all(torch.equal(shipped[k], new[k]) for k in shipped)
    assert (
        read_json(out / "model/vae/config.json")["scaling_factor"]
        == read_json(TOY_MODEL_DIR / "vae/config.json")["scaling_factor"]
    )
    shipped = load_safetensors(TOY_MODEL_DIR / "unet/diffusion_pytorch_model.safetensors")[0]
    new = load_safetensors(out / "model/unet/diffusion_pytorch_model.safetensors")[0]
    changed = [k for k in shipped if not torch.equal(shipped[k], new[k])]
    assert changed and all((shipped[k] - new[k]).abs().max() < 0.05 for k in shipped)  # a small step on
    assert (
        pretrain_main(["--out", str(tmp_path / "bad"), "--device", "cpu", "--init-from", str(tmp_path)]) == 2
    )


def test_video_noise_shares_the_chosen_part_of_its_variance_across_frames():
    from dreamvideo.toy.pretrain import video_noise

    shape = torch.Size((64, 4, 8, 8, 8))
    torch.manual_seed(0)
    independent = video_noise(shape, 0.0, torch.device("cpu"))
    torch.manual_seed(0)
    assert torch.equal(independent, torch.randn(shape))  # 0: exactly the plain draw (old runs reproduce)
    for shared in (0.0, 0.5, 0.9):
        noise = video_noise(shape, shared, torch.device("cpu"))
        assert noise.var().item() == pytest.approx(1.0, abs=0.03)
        frames = noise.movedim(2, 0).flatten(1)  # (f, everything else)
        between_frames = torch.corrcoef(frames)[~torch.eye(8, dtype=torch.bool)].mean().item()
        assert between_frames == pytest.approx(shared, abs=0.03)
    assert pretrain_main(["--out", "unused", "--shared-noise", "1.0"]) == 2


def test_timestep_weights_bias_the_noisiest_portion():
    from dreamvideo.toy.pretrain import timestep_weights

    w = timestep_weights(1000, 0.25, 3.0)
    assert w.sum().item() == pytest.approx(1.0)
    assert w[750:].sum().item() == pytest.approx(0.5)  # 3 * 250 / (750 + 3 * 250)
    assert torch.equal(w[:750], torch.full((750,), w[0].item())) and w[999].item() == pytest.approx(
        3 * w[0].item()
    )
    torch.testing.assert_close(timestep_weights(1000, 0.25, 1.0), torch.full((1000,), 1e-3))


def test_pretrain_draws_unet_timesteps_from_the_biased_weights(tmp_path, monkeypatch):
    from diffusers import UNet3DConditionModel

    from dreamvideo.toy import pretrain

    seen, forward = [], UNet3DConditionModel.forward

    def recording(self, sample, timestep, *args, **kwargs):
        seen.append(timestep.tolist())
        return forward(self, sample, timestep, *args, **kwargs)

    monkeypatch.setattr(UNet3DConditionModel, "forward", recording)
    # all the probability on the last timestep: every drawn t must be 999
    monkeypatch.setattr(pretrain, "timestep_weights", lambda n, portion, m: torch.eye(n)[n - 1])
    extra = "--timestep-bias-multiplier 4"
    assert pretrain_main(warm_start_args(tmp_path / "run", steps=2, batch=2, extra=extra)) == 0
    assert seen and all(t == [999, 999] for t in seen[:2])
    assert read_json(tmp_path / "run/train_log.json")["args"]["timestep_bias_multiplier"] == 4.0
    for bad in ("--timestep-bias-multiplier 0", "--timestep-bias-portion 1.5"):
        assert pretrain_main(["--out", "unused", *bad.split()]) == 2


def test_pretrain_keeps_the_default_guidance_of_the_base_it_continues(tmp_path):
    from dreamvideo.pipeline import DreamVideoPipeline

    shipped = read_json(TOY_MODEL_DIR / "model_index.json")["default_guidance_scale"]
    assert pretrain_main(warm_start_args(tmp_path / "kept")) == 0
    assert read_json(tmp_path / "kept/model/model_index.json")["default_guidance_scale"] == shipped
    extra = "--default-guidance-scale 5"
    assert pretrain_main(warm_start_args(tmp_path / "set", extra=extra)) == 0
    assert DreamVideoPipeline.from_pretrained(tmp_path / "set/model").config.default_guidance_scale == 5.0
    assert pretrain_main(warm_start_args(tmp_path / "bad", extra="--default-guidance-scale 0.5")) == 2
    assert not (tmp_path / "bad").exists()


def test_pretrain_v_prediction_zero_snr_from_a_unet_only_folder(tmp_path):
    import shutil

    from diffusers import DDIMScheduler

    from dreamvideo.pipeline import DreamVideoPipeline
    from dreamvideo.toy.model import TOY_MODEL_DIR

    candidate = tmp_path / "candidate"  # only unet/: CLIP and the VAE come from the shipped model
    shutil.copytree(TOY_MODEL_DIR / "unet", candidate / "unet")
    out = tmp_path / "v"
    flags = "--prediction-type v_prediction --zero-snr --timestep-spacing trailing --snr-shift -1"
    assert pretrain_main(warm_start_args(out, candidate, extra=flags)) == 0
    scheduler = DDIMScheduler.from_pretrained(out / "model", subfolder="scheduler")
    assert scheduler.config.prediction_type == "v_prediction" and scheduler.config.rescale_betas_zero_snr
    assert scheduler.alphas_cumprod[-1] == 0 and scheduler.config.timestep_spacing == "trailing"
    unshifted = toy_scheduler("v_prediction", zero_snr=True, timestep_spacing="trailing")
    assert (
        scheduler.alphas_cumprod[1:-1] < unshifted.alphas_cumprod[1:-1]
    ).all()  # shifted: noisier everywhere
    pipe = DreamVideoPipeline.from_pretrained(out / "model")
    assert pipe.scheduler.config.prediction_type == "v_prediction" and pipe.default_guidance_rescale == 0.7
    assert (
        pipe("a red star moves left", num_frames=2, num_inference_steps=2, progress=False).frames[0].shape[0]
        == 2
    )
    assert pretrain_main(["--out", str(tmp_path / "x"), "--zero-snr"]) == 2  # zero SNR needs v-prediction


def test_pretrain_trains_the_text_encoder_apart_from_clip_and_exports_a_stopped_run(tmp_path):
    from dreamvideo.toy.model import TOY_MODEL_DIR

    out = tmp_path / "text"
    flags = warm_start_args(out, steps=4, extra="--text-encoder-lr 1e-3 --checkpoint-every 1")
    assert pretrain_main([*flags, "--export-only"]) == 2  # nothing to export yet
    assert (
        pretrain_main([*flags, "--max-steps", "2"]) == 0 and not (out / "model").exists()
    )  # stopped at step 2
    assert pretrain_main([*flags, "--resume", "--export-only"]) == 0
    key = "text_model.embeddings.token_embedding.weight"
    shipped = load_safetensors(TOY_MODEL_DIR / "text_encoder/model.safetensors")[0][key]
    exported = load_safetensors(out / "model/text_encoder/model.safetensors")[0][key]
    assert not torch.equal(exported, shipped)  # the UNet's text encoder was trained ...
    clip = load_safetensors(out / "model/clip/model.safetensors")[0][key]
    assert torch.equal(
        clip, load_safetensors(TOY_MODEL_DIR / "clip/model.safetensors")[0][key]
    )  # ... not CLIP's
    newest = latest_checkpoint(out / "checkpoints/unet")
    checkpoint = load_safetensors(newest / "weights.safetensors")[0]
    assert phase_state(out, "unet")["step"] == 2  # exporting did not train
    # the exported UNet and text encoder are the EMA weights (diffusers' EMAModel: UNet parameters, then text's)
    unet_keys = [k for k, _ in toy_unet().named_parameters()]
    unet = load_safetensors(out / "model/unet/diffusion_pytorch_model.safetensors")[0]
    ema = [checkpoint[f"ema.{i}"] for i in range(sum(k.startswith("ema.") for k in checkpoint))]
    assert all(torch.equal(unet[k], e) for k, e in zip(unet_keys, ema, strict=False))
    assert not torch.equal(unet[unet_keys[0]], checkpoint[f"unet.{unet_keys[0]}"])  # not the raw weights
    text_keys = [k for k, _ in CLIPTextModel.from_pretrained(out / "model/text_encoder").named_parameters()]
    assert torch.equal(exported, ema[len(unet_keys) + text_keys.index(key.removeprefix("text_model."))])
    assert pretrain_main([*flags, "--resume"]) == 0  # and the run continues to its end
    assert phase_state(out, "unet")["step"] == 4


def test_foreground_weighted_mse_counts_sprite_cells_weight_times():
    from dreamvideo.toy.pretrain import foreground_weighted_mse

    pred, target = torch.zeros(1, 1, 2, 2, 2), torch.zeros(1, 1, 2, 2, 2)
    pred[0, 0, 0, 0, 0], pred[0, 0, 1, 1, 1] = 1.0, 2.0  # errors 1 (on the sprite) and 4 (background)
    masks = torch.zeros(1, 2, 8, 8, dtype=torch.bool)
    masks[0, 0, 1, 2] = True  # one pixel of frame 0 inside latent cell (0, 0)
    assert foreground_weighted_mse(pred, target, masks, 1.0) == pytest.approx(5 / 8)
    assert foreground_weighted_mse(pred, target, masks, 3.0) == pytest.approx((3 * 1 + 4) / 8 / (10 / 8))


def test_pretrain_with_foreground_weight_and_centred_paths_trains(tmp_path, monkeypatch):
    out = tmp_path / "fg"
    extra = "--image-prob 0.5 --foreground-weight 4 --anchor-jitter 2"
    seen = []
    draw = world.sample_pretraining_spec
    monkeypatch.setattr(world, "sample_pretraining_spec", lambda rng, j=None: seen.append(j) or draw(rng, j))
    assert pretrain_main(warm_start_args(out, steps=2, batch=2, extra=extra)) == 0
    log = read_json(out / "train_log.json")
    assert log["args"]["foreground_weight"] == 4 and len(log["phases"]["unet"]["losses"]) == 2
    assert seen and set(seen) == {2.0}  # the clips were drawn with the centred paths asked for


def test_word_margin_loss_asks_each_word_to_move_the_states_after_it():
    from dreamvideo.toy.pretrain import word_margin_loss

    ids, other_ids = torch.tensor([[0, 1, 2, 3]]), torch.tensor([[0, 1, 5, 3]])  # token 2 swapped
    states = torch.ones(1, 4, 2)
    other = states.clone()
    other[0, 2:] = torch.tensor(
        [1.0, -1.0]
    )  # moves the swapped token and the one after it by |(0, 2)| / |(1, 1)|
    moved = 2 / 2**0.5
    assert word_margin_loss(states, other, states, ids, other_ids, 2.0, 1.0) == pytest.approx(2.0 - moved)
    assert word_margin_loss(states, other, states, ids, other_ids, 1.0, 1.0) == 0  # moved enough
    other[0, :2] = -5.0  # tokens before the swapped word cannot see it: not counted
    assert word_margin_loss(states, other, states, ids, other_ids, 2.0, 1.0) == pytest.approx(2.0 - moved)
    start = states + 1.0  # the change in this phase, relative to the states it started from
    assert word_margin_loss(states, other, start, ids, other_ids, 1.0, 3.0) == pytest.approx(3 * 1 / 4)


def test_pretrain_text_phase_sets_motion_words_apart_before_the_unet(tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from dreamvideo.toy.model import TOY_MODEL_DIR

    tokenizer = build_toy_tokenizer()
    captions = ["a purple star moves left on blue sky", "a purple star moves right on blue sky"]
    ids = tokenizer(captions, padding="max_length", max_length=MAX_LENGTH, return_tensors="pt").input_ids
    where = int((ids[0] != ids[1]).nonzero()[0])

    def apart(folder):  # the move of the states from the motion word on, averaged over those tokens
        with torch.no_grad():
            states = CLIPTextModel.from_pretrained(folder / "text_encoder")(ids).last_hidden_state
        mean = states[:, where:].mean(1)
        return ((mean[0] - mean[1]).norm() / mean[0].norm()).item()

    start = tmp_path / "start"  # the shipped UNet with CLIP's own text tower, whose motion words sit close
    shutil.copytree(TOY_MODEL_DIR / "unet", start / "unet")
    shutil.copytree(TOY_MODEL_DIR / "text_encoder", start / "text_encoder")
    text_tower = {
        k: v
        for k, v in load_file(TOY_MODEL_DIR / "clip/model.safetensors").items()
        if k.startswith("text_model.")
    }
    save_file(text_tower, start / "text_encoder/model.safetensors")
    out = tmp_path / "words"
    flags = warm_start_args(out, start, extra="--text-steps 40 --text-batch 16 --checkpoint-every 20")
    assert pretrain_main([*flags, "--max-steps", "20"]) == 0 and not (out / "model").exists()
    assert phase_state(out, "text")["step"] == 20
    assert pretrain_main([*flags, "--resume"]) == 0
    log = read_json(out / "train_log.json")
    assert list(log["phases"]) == ["text", "unet"] and log["phases"]["text"]["steps"] == 40
    before, after = apart(start), apart(out / "model")
    assert before < 0.15 and after > 2 * before  # "left" and "right" now clearly differ
    key = "text_model.embeddings.token_embedding.weight"
    clip = load_safetensors(out / "model/clip/model.safetensors")[0][key]
    assert torch.equal(clip, load_safetensors(TOY_MODEL_DIR / "clip/model.safetensors")[0][key])


def test_pretrain_text_offset_moves_each_motion_along_its_own_direction_and_keeps_the_rest(tmp_path):
    from dreamvideo.toy.model import TOY_MODEL_DIR
    from dreamvideo.toy.pretrain import motion_offsets

    tokenizer = build_toy_tokenizer()
    captions = ["a purple star moves left on blue sky", "a purple star circles on blue sky"]
    ids = tokenizer(captions, padding="max_length", max_length=MAX_LENGTH, return_tensors="pt").input_ids
    where = int((ids[0] != ids[1]).nonzero()[0])

    def states(folder):
        with torch.no_grad():
            return CLIPTextModel.from_pretrained(folder / "text_encoder")(ids).last_hidden_state

    out = tmp_path / "offset"
    flags = warm_start_args(out, extra="--text-steps 80 --text-batch 16 --text-offset 1.0 --text-lr 3e-3")
    assert pretrain_main(flags) == 0
    assert read_json(out / "train_log.json")["args"]["text_offset"] == 1.0
    before, after = states(TOY_MODEL_DIR), states(out / "model")
    moved = (after - before)[:, where:].mean(1)  # per caption, over the tokens from the motion word on
    directions = motion_offsets(before, 1.0)
    for row, motion in enumerate(["moves left", "circles"]):
        cosines = torch.nn.functional.cosine_similarity(moved[row][None], directions, dim=-1)
        assert int(cosines.argmax()) == world.MOTIONS.index(motion) and cosines.max() > 0.5
    unchanged = (after - before)[:, :where].norm(dim=-1).mean() / before[:, :where].norm(dim=-1).mean()
    assert unchanged < 0.5 * (after - before)[:, where:].norm(dim=-1).mean() / before.norm(dim=-1).mean()
    assert pretrain_main([*flags, "--text-offset", "-1"]) == 2
