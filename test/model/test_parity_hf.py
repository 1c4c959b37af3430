"""Our Qwen2-VL against transformers' Qwen2VLForConditionalGeneration on the same random weights,
loaded through our checkpoint loader from every checkpoint layout in use (fp32, CPU)."""

from __future__ import annotations

import pytest
import torch
from hf_reference import LAYOUTS, make_hf_model, save_checkpoint
from prompts import CONVERSATIONS, conversation_images

from valora.layers.attention import AttentionMetadata
from valora.mrope import mrope_positions
from valora.multimodal import expand_image_placeholders, process_image
from valora.tokenizer import Tokenizer
from valora.weights import load_model

REL_TOL = 1e-4


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.builtin()


def build_prompt(tokenizer: Tokenizer, name: str, image_token_id: int):
    messages, _ = CONVERSATIONS[name]
    images = [process_image(img) for img in conversation_images(name)]
    ids = tokenizer.encode(tokenizer.apply_chat_template(messages))
    return expand_image_placeholders(ids, images, image_token_id), images


def hf_logits(hf_model, ids: list[int], images) -> torch.Tensor:
    device = hf_model.device
    input_ids = torch.tensor([ids], device=device)
    kwargs = {}
    if images:
        kwargs["pixel_values"] = torch.cat([im.pixel_values for im in images]).to(device)
        kwargs["image_grid_thw"] = torch.tensor([im.grid_thw for im in images], device=device)
        kwargs["mm_token_type_ids"] = (input_ids == hf_model.config.image_token_id).int()
    with torch.no_grad():
        return hf_model(input_ids=input_ids, **kwargs).logits[0].float()


def our_logits(model, tokenizer, names: list[str]) -> list[torch.Tensor]:
    """Every prompt in one flattened batch, the way the engine feeds the model -> fp32 logits
    per prompt."""
    cfg = model.cfg
    all_ids, all_positions, all_images, lens = [], [], [], []
    for name in names:
        ids, images = build_prompt(tokenizer, name, cfg.image_token_id)
        positions, _ = mrope_positions(
            ids, [im.grid_thw for im in images], cfg.image_token_id, cfg.vision.spatial_merge_size
        )
        all_ids += ids
        all_positions.append(torch.from_numpy(positions.copy()))
        all_images += images
        lens.append(len(ids))
    image_embeds = None
    if all_images:
        pixels = torch.cat([im.pixel_values for im in all_images])
        image_embeds = model.encode_images(pixels, [im.grid_thw for im in all_images])
    with torch.no_grad():
        hidden = model(
            torch.tensor(all_ids, device=model.device),
            torch.cat(all_positions, dim=1).to(model.device),
            AttentionMetadata.for_lengths(lens),
            image_embeds,
        )
        return list(model.compute_logits(hidden).split(lens))


def relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours - ref).abs().max() / ref.abs().max())


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "separate-head"])
def test_logits_match_transformers(tmp_path, tokenizer, layout, tied):
    hf_model = make_hf_model(tie_word_embeddings=tied)
    checkpoint = save_checkpoint(hf_model, tmp_path / "ckpt", layout)
    model = load_model(str(checkpoint))
    assert (model.lm_head is None) == tied

    names = list(CONVERSATIONS)
    ours = our_logits(model, tokenizer, names)
    for name, logits in zip(names, ours):
        ids, images = build_prompt(tokenizer, name, model.cfg.image_token_id)
        ref = hf_logits(hf_model, ids, images)
        assert logits.shape == ref.shape
        err = relative_error(logits, ref)
        assert err <= REL_TOL, f"{name}: relative error {err:.2e}"


def test_images_change_the_logits(tmp_path, tokenizer):
    """Guards the parity test: image features really flow into the language model."""
    hf_model = make_hf_model(tie_word_embeddings=True)
    model = load_model(str(save_checkpoint(hf_model, tmp_path / "ckpt", "original-flat-single")))
    ids, images = build_prompt(tokenizer, "one_image", model.cfg.image_token_id)
    positions, _ = mrope_positions(ids, [images[0].grid_thw], model.cfg.image_token_id, 2)
    meta = AttentionMetadata.for_lengths([len(ids)])
    embeds = model.encode_images(images[0].pixel_values, [images[0].grid_thw])
    with torch.no_grad():
        a = model(torch.tensor(ids), torch.from_numpy(positions.copy()), meta, embeds)
        b = model(torch.tensor(ids), torch.from_numpy(positions.copy()), meta, embeds * 0.5)
    assert relative_error(a, b) > 1e-3


def test_mrope_positions_match_get_rope_index(tokenizer):
    hf_model = make_hf_model(tie_word_embeddings=True)
    for name in CONVERSATIONS:
        ids, images = build_prompt(tokenizer, name, hf_model.config.image_token_id)
        if not images:
            continue
        grids = [im.grid_thw for im in images]
        ours, delta = mrope_positions(ids, grids, hf_model.config.image_token_id, 2)
        input_ids = torch.tensor([ids])
        ref, ref_delta = hf_model.model.get_rope_index(
            input_ids,
            mm_token_type_ids=(input_ids == hf_model.config.image_token_id).int(),
            image_grid_thw=torch.tensor(grids),
        )
        assert torch.equal(torch.from_numpy(ours.copy()), ref[:, 0]), name
        assert delta == int(ref_delta[0, 0]) and delta < 0, name
