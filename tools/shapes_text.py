"""The text side of the shapes world: a learned-BPE ``CLIPTokenizer``, the base CLIP
(``clip-base``, whose text tower conditions the diffusion model) and the evaluator CLIP
(``shapes-clip``, fine-tuned with brand-style pairs). See :mod:`tools.shapes_train`.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from tools import shapes_world as sw
from tools.shapes_common import (
    IMAGE_SIZE,
    MAX_TOKENS,
    SceneData,
    cosine_schedule,
    load_ckpt,
    log,
    replace_folder,
    save_ckpt,
    tokenize,
)

# ---------------------------------------------------------------- tokenizer


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def learn_merges(words: Counter, max_merges: int = 2000) -> list[tuple[str, str]]:
    """Plain BPE on word counts (CLIP style: the last symbol carries ``</w>``), deterministic ties."""
    corpus = {tuple(list(w[:-1]) + [w[-1] + "</w>"]): c for w, c in words.items() if w}
    merges: list[tuple[str, str]] = []
    for _ in range(max_merges):
        pairs: Counter = Counter()
        for symbols, count in corpus.items():
            for a, b in zip(symbols, symbols[1:]):
                pairs[(a, b)] += count
        if not pairs:
            break
        best = max(pairs.items(), key=lambda kv: (kv[1], tuple(-ord(ch) for ch in kv[0][0] + kv[0][1])))[0]
        merges.append(best)
        merged = {}
        for symbols, count in corpus.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            merged[tuple(out)] = count
        corpus = merged
    return merges


def caption_corpus(n: int = 4000, seed: int = 123) -> Counter:
    rng = random.Random(seed)
    words: Counter = Counter()
    for _ in range(n):
        scene = sw.sample_scene(rng)
        for text in (sw.caption(scene), sw.caption(scene, rng)):
            for w in text.replace(",", " ").split():
                words[w] += 1
    words["style"] += 1  # "zentrix style": style is a plain word, the brand name is not learned
    for phrase in ("a", "an", "image", "picture", "of", "with", "and", "the"):
        words[phrase] += 1
    return words


def build_tokenizer(folder: Path, n_captions: int = 4000):
    """A ``CLIPTokenizer`` with a learned small vocabulary, saved to ``folder``."""
    from transformers import CLIPTokenizer

    byte_chars = list(bytes_to_unicode().values())
    vocab_list = byte_chars + [c + "</w>" for c in byte_chars]
    merges = learn_merges(caption_corpus(n_captions))
    vocab_list += [a + b for a, b in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[(a, b) for a, b in merges], model_max_length=MAX_TOKENS)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    # vocab.json/merges.txt too, so the slow-path loaders work as well
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    return CLIPTokenizer.from_pretrained(folder)


# ---------------------------------------------------------------- configs


def clip_config(tokenizer):
    from transformers import CLIPConfig

    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=64,
    )
    vision = dict(
        image_size=IMAGE_SIZE,
        patch_size=4,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=3,
        num_attention_heads=4,
        projection_dim=64,
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=64)


# ---------------------------------------------------------------- stages


def train_clip(out: Path, work: Path, tokenizer, data: SceneData, seconds: float, seed: int):
    from transformers import CLIPModel

    torch.manual_seed(seed)
    model = CLIPModel(clip_config(tokenizer))
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.05)
    batch, est_total = 128, 3000
    sched = cosine_schedule(opt, 100, est_total)
    ck = load_ckpt(work / "clip.ckpt")
    step, spent = 0, 0.0
    if ck:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        step, spent = ck["step"], ck["spent"]
        log(f"clip: resumed at step {step} ({spent:.0f}s spent)")
    if ck and ck.get("done"):
        return model
    gen = torch.Generator().manual_seed(seed + step)
    start, last_save, losses = time.time(), time.time(), []
    model.train()
    while spent + (time.time() - start) < seconds:
        idx = torch.randint(0, len(data), (batch,), generator=gen)
        pixels = data.images(idx)
        ids = tokenize(tokenizer, data.captions(idx))
        outputs = model(input_ids=ids, pixel_values=pixels, return_loss=True)
        opt.zero_grad(set_to_none=True)
        outputs.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(outputs.loss.item())
        step += 1
        if step % 50 == 0:
            log(f"clip step {step} loss {np.mean(losses[-50:]):.4f}")
        if time.time() - last_save > 180:
            save_ckpt(
                work / "clip.ckpt",
                dict(
                    model=model.state_dict(),
                    opt=opt.state_dict(),
                    sched=sched.state_dict(),
                    step=step,
                    spent=spent + time.time() - start,
                ),
            )
            last_save = time.time()
    spent += time.time() - start
    final = float(np.mean(losses[-50:])) if losses else float("nan")
    save_ckpt(
        work / "clip.ckpt",
        dict(model=model.state_dict(), opt=opt.state_dict(), sched=sched.state_dict(), step=step, spent=spent, done=True, loss=final),
    )
    log(f"clip: done, {step} steps, {spent:.0f}s, loss {final:.4f}")
    export_clip(
        out / "clip-base", model, tokenizer, dict(steps=step, seconds=round(spent), final_loss=final, batch=batch, seed=seed)
    )
    return model


def export_clip(folder: Path, model, tokenizer, info: dict) -> None:
    from transformers import CLIPImageProcessor

    tmp = folder.parent / f".{folder.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    CLIPImageProcessor(
        do_resize=True,
        size={"shortest_edge": IMAGE_SIZE},
        do_center_crop=True,
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        resample=3,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    ).save_pretrained(tmp)
    (tmp / "training.json").write_text(json.dumps(info, indent=1))
    replace_folder(tmp, folder)


def train_clip_styles(
    out: Path,
    work: Path,
    tokenizer,
    base,
    data: SceneData,
    seconds: float,
    seed: int,
    brand_share: float = 0.2,
    style_token_dropout: float = 0.5,
    base_info: dict | None = None,
):
    """The evaluator CLIP (exported as ``shapes-clip``): the base CLIP fine-tuned on base-world
    pairs mixed with brand-style pairs (captions end with ``zentrix style``), so that its image
    space separates the brand look. The diffusion model's text tower stays the brand-naive
    base CLIP's: the generator never sees the brand; only the judge knows it.

    ``style_token_dropout`` of the brand captions lose their ``zentrix style`` suffix, so a
    content-only prompt still matches a brand image of that content: CLIP-T then measures
    content, not the absence of the style words. ``base_info`` (recorded in ``training.json``)
    is what ``base`` was trained as; by default ``DIR/clip-base/training.json``.
    """
    from transformers import CLIPModel

    model = CLIPModel(base.config)
    model.load_state_dict(base.state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=0.05)
    ck = load_ckpt(work / "clip_styles.ckpt")
    step, spent = 0, 0.0
    if ck:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        step, spent = ck["step"], ck["spent"]
        if ck.get("done"):
            return model
    brand = sw.render_brand(4000, seed=seed + 1000)
    brand_pixels = torch.from_numpy(np.stack([np.asarray(im) for im, _, _ in brand])).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    brand_caps = [c for _, c, _ in brand]
    gen = torch.Generator().manual_seed(seed + 3 + step)
    batch, n_brand = 128, int(128 * brand_share)
    start, losses = time.time(), []
    model.train()
    while spent + (time.time() - start) < seconds:
        idx = torch.randint(0, len(data), (batch - n_brand,), generator=gen)
        bidx = torch.randint(0, len(brand), (n_brand,), generator=gen)
        pixels = torch.cat([data.images(idx), brand_pixels[bidx]])
        styled = [brand_caps[i] for i in bidx.tolist()]
        keep = (torch.rand(len(styled), generator=gen) >= style_token_dropout).tolist()
        styled = [c if k else c.removesuffix(f", {sw.BRAND_TOKEN}") for c, k in zip(styled, keep)]
        ids = tokenize(tokenizer, data.captions(idx) + styled)
        outputs = model(input_ids=ids, pixel_values=pixels, return_loss=True)
        opt.zero_grad(set_to_none=True)
        outputs.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(outputs.loss.item())
        step += 1
        if step % 25 == 0:
            log(f"clip-styles step {step} loss {np.mean(losses[-25:]):.4f}")
    spent += time.time() - start
    final = float(np.mean(losses[-25:])) if losses else float("nan")
    save_ckpt(work / "clip_styles.ckpt", dict(model=model.state_dict(), opt=opt.state_dict(), step=step, spent=spent, done=True))
    if base_info is None:
        trained = out / "clip-base" / "training.json"
        base_info = json.loads(trained.read_text()) if trained.is_file() else {}
    info = dict(
        base=base_info,
        style_steps=step,
        style_seconds=round(spent),
        style_final_loss=final,
        brand_share=brand_share,
        style_token_dropout=style_token_dropout,
        seed=seed,
    )
    export_clip(out / "shapes-clip", model, tokenizer, info)
    log(f"clip-styles: done, {step} steps, {spent:.0f}s, loss {final:.4f}")
    return model


def text_tower(clip):
    """The diffusion model's text encoder: a ``CLIPTextModel`` with ``clip``'s text weights."""
    from transformers import CLIPTextModel

    text_encoder = CLIPTextModel(clip.config.text_config)
    text_encoder.load_state_dict(clip.text_model.state_dict())
    return text_encoder
