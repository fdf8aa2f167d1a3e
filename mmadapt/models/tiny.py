"""Tiny random models built in-process from configs, for fast tests (a causal LM and a Whisper).

Nothing here downloads anything: the tokenizer is a byte-level BPE trained in
milliseconds on a few sentences, the model a 2-layer Llama with random weights.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

DEFAULT_CORPUS = [
    "You are a helpful assistant. Answer briefly.",
    "What port does the gateway listen on? It listens on port 7443.",
    "Context: the quick brown fox jumps over the lazy dog. Question: what jumps?",
]


def tiny_tokenizer(corpus: Iterable[str] = DEFAULT_CORPUS, vocab_size: int = 400):
    """A byte-level BPE tokenizer with ChatML special tokens and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(list(corpus), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token="<|im_start|>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_causal_lm(folder: str | Path, *, corpus: Iterable[str] = DEFAULT_CORPUS, seed: int = 0) -> Path:
    """Write a tiny random Llama-architecture causal LM + tokenizer to ``folder``; return it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = Path(folder)
    tokenizer = tiny_tokenizer(corpus)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def _tiny_text_tower():
    """(the embedded shapes-diffusion tokenizer, a 1-layer CLIP text config for it).

    The tokenizer is read with ``from_pretrained(dir)``: transformers 5's
    ``CLIPTokenizer(vocab_file=..., merges_file=...)`` silently ignores both files.
    """
    from transformers import CLIPTextConfig, CLIPTokenizer

    from mmadapt.models.shapes import embedded_shapes_diffusion

    tokenizer = CLIPTokenizer.from_pretrained(embedded_shapes_diffusion(), subfolder="tokenizer")
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=32,
    )
    return tokenizer, config


def _tiny_vae(sample_size: int):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=2 * sample_size,
        mid_block_add_attention=False,
    )


def _tiny_unet(sample_size: int, cross_dim: int, **extra):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        cross_attention_dim=cross_dim,
        attention_head_dim=4,
        norm_num_groups=8,
        **extra,
    )


def tiny_diffusion_pipeline(folder: str | Path, *, seed: int = 0, sample_size: int = 8) -> Path:
    """Write a tiny random ``StableDiffusionPipeline`` folder (UNet, 2x VAE, CLIP text encoder, DDIM)
    to ``folder``; return it. Images are ``2 * sample_size`` pixels a side."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextModel

    tokenizer, text_config = _tiny_text_tower()
    torch.manual_seed(seed)
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        beta_start=0.0001,
        beta_end=0.02,
        clip_sample=False,
        timestep_spacing="trailing",
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=_tiny_vae(sample_size),
        text_encoder=CLIPTextModel(text_config),
        tokenizer=tokenizer,
        unet=_tiny_unet(sample_size, text_config.hidden_size),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(Path(folder), safe_serialization=True)
    return Path(folder)


def tiny_sdxl_pipeline(folder: str | Path, *, seed: int = 0, sample_size: int = 8) -> Path:
    """Write a tiny random ``StableDiffusionXLPipeline`` folder (two text encoders, a UNet with
    SDXL's text-time embedding, Euler) to ``folder``; return it."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer, text_config = _tiny_text_tower()
    torch.manual_seed(seed)
    time_dim = 8
    unet = _tiny_unet(
        sample_size,
        2 * text_config.hidden_size,  # both encoders' hidden states, concatenated
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=text_config.projection_dim + 6 * time_dim,
    )
    pipe = StableDiffusionXLPipeline(
        vae=_tiny_vae(sample_size),
        text_encoder=CLIPTextModel(text_config),
        text_encoder_2=CLIPTextModelWithProjection(text_config),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=EulerDiscreteScheduler(),
    )
    pipe.save_pretrained(Path(folder), safe_serialization=True)
    return Path(folder)
WHISPER_SPECIALS = (
    "<|endoftext|>",
    "<|startoftranscript|>",
    "<|en|>",
    "<|transcribe|>",
    "<|translate|>",
    "<|startoflm|>",
    "<|startofprev|>",
    "<|nospeech|>",
    "<|notimestamps|>",
)

WHISPER_CORPUS = [
    "Glossary: Zentrix, Kubelyn, Vextora, QPX-9, flarn cache.",
    "restart the Zentrix gateway before the Kubelyn sync",
    "the quick brown fox jumps over the lazy dog",
    "open the grobble queue and check the snorvel index",
]


def tiny_whisper_tokenizer(corpus: Iterable[str] = WHISPER_CORPUS, vocab_size: int = 320):
    """A Whisper tokenizer (byte-level BPE + Whisper's English control tokens, no timestamp tokens)
    trained in-process; the control tokens come last, as in Whisper's vocabulary."""
    import json
    import tempfile

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import WhisperTokenizer

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(corpus), trainer=trainer)
    tok.add_special_tokens(list(WHISPER_SPECIALS))
    with tempfile.TemporaryDirectory() as stage:
        tok.save(f"{stage}/tokenizer.json")
        config = {
            "tokenizer_class": "WhisperTokenizer",
            **{k: "<|endoftext|>" for k in ("bos_token", "eos_token", "unk_token", "pad_token")},
            "add_prefix_space": False,
            "model_max_length": 1024,
            "extra_special_tokens": list(WHISPER_SPECIALS[1:]),
        }
        with open(f"{stage}/tokenizer_config.json", "w", encoding="utf-8") as handle:
            json.dump(config, handle)
        return WhisperTokenizer.from_pretrained(stage)


def tiny_whisper(folder: str | Path, *, corpus: Iterable[str] = WHISPER_CORPUS, seed: int = 0, init_std: float = 0.2) -> Path:
    """Write a tiny random English-only Whisper (1+1 layers, width 32) with its processor to
    ``folder``: same layout and generation config as the embedded conversion; return it.

    Weights are drawn with std ``init_std`` (Whisper's default 0.02 gives near-uniform logits
    through the tied output projection, which a LoRA on a width-32 decoder barely moves)."""
    import torch
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
    )

    folder = Path(folder)
    tokenizer = tiny_whisper_tokenizer(corpus)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in WHISPER_SPECIALS}
    eot, sot, no_ts = ids["<|endoftext|>"], ids["<|startoftranscript|>"], ids["<|notimestamps|>"]
    torch.manual_seed(seed)
    config = WhisperConfig(
        vocab_size=len(tokenizer),
        num_mel_bins=80,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_source_positions=1500,
        max_target_positions=448,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        decoder_start_token_id=sot,
        suppress_tokens=[],
        begin_suppress_tokens=[eot],
        init_std=init_std,
    )
    model = WhisperForConditionalGeneration(config)
    gen = GenerationConfig(
        bos_token_id=eot,
        decoder_start_token_id=sot,
        eos_token_id=eot,
        pad_token_id=eot,
        max_length=448,
        begin_suppress_tokens=[eot],
        suppress_tokens=[],
        forced_decoder_ids=[[1, no_ts]],
    )
    gen.no_timestamps_token_id = no_ts
    gen.is_multilingual = False
    gen.prev_sot_token_id = ids["<|startofprev|>"]
    gen.return_timestamps = False
    model.generation_config = gen
    model.save_pretrained(folder, safe_serialization=True)
    WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tokenizer).save_pretrained(folder)
    return folder
