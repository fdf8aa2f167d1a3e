"""faster-whisper on a multilingual `mmadapt export --format ct2`. faster-whisper honours a language only
when CTranslate2 calls the model multilingual: before 4.7 from 51,865 tokens on, since 4.7 (4.8 installed
here) when the vocabulary holds the empty token that the multilingual vocabulary has at id 50,256 (a
51,865-token vocabulary without it still loads as English-only: checked). So the tiny random model here
has Whisper's real multilingual layout: 50,257 text tokens (the last one empty), then ``<|endoftext|>``,
``<|startoftranscript|>``, the 99 language tokens in Whisper's order, ``<|translate|>``,
``<|transcribe|>``, ``<|startoflm|>``, ``<|startofprev|>``, ``<|nospeech|>``, ``<|notimestamps|>`` and 1,501
timestamp tokens (51,865 in all), and 128 mel bins. Its greedy tokens through faster-whisper, with a
forced language and with ``task="translate"``, equal transformers' ``generate`` with the same language
and task and mmadapt's greedy decoder under the same prefix (clips padded with silence to 30 s, as in
test_faster_whisper.py; every side suppresses the same tokens: the timestamps, the control tokens, and
a blank or ``<|endoftext|>`` first token)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("ctranslate2")
faster_whisper = pytest.importorskip("faster_whisper")
DATASET = Path(__file__).resolve().parents[2] / "datasets" / "speech-domain"
TEXT_TOKENS = 50257  # the multilingual tiktoken vocabulary (tiny.en's GPT-2 one has 50256 and <|endoftext|>)
CAP = 8


def multilingual_tokenizer(stage: Path):
    """A byte-level BPE trained in-process, padded with unreachable entries to 50,257 text tokens, then
    Whisper's multilingual control, language and timestamp tokens at their real ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import WhisperTokenizer
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    from tests.fixtures.tiny import WHISPER_CORPUS

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=320, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([*WHISPER_CORPUS, "le chat est sur la table", "der Hund schläft im Garten"], trainer=trainer)
    trained = json.loads(tok.to_str())["model"]
    vocab = dict(trained["vocab"])
    vocab.update({f"<unused{n}>": n for n in range(len(vocab), TEXT_TOKENS - 1)})  # no merge reaches them
    vocab[""] = TEXT_TOKENS - 1  # the multilingual vocabulary's empty token: CTranslate2 >= 4.7 reads multilingual from it
    full = Tokenizer(
        models.BPE(vocab=vocab, merges=[tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]])
    )
    full.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    full.decoder = decoders.ByteLevel()
    languages = [f"<|{code}|>" for code in list(LANGUAGES)[:99]]  # v1/v2 multilingual: no <|yue|>
    controls = ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>"]
    timestamps = [f"<|{n * 0.02:.2f}|>" for n in range(1501)]
    specials = ["<|endoftext|>", "<|startoftranscript|>", *languages, *controls, *timestamps]
    full.add_special_tokens(specials)
    assert full.get_vocab_size() == 51865 and full.token_to_id("<|notimestamps|>") == 50363
    stage.mkdir(parents=True)
    full.save(str(stage / "tokenizer.json"))
    config = {
        "tokenizer_class": "WhisperTokenizer",
        **{k: "<|endoftext|>" for k in ("bos_token", "eos_token", "unk_token", "pad_token")},
        "add_prefix_space": False,
        "model_max_length": 1024,
        "extra_special_tokens": specials[1:],
    }
    (stage / "tokenizer_config.json").write_text(json.dumps(config))
    return WhisperTokenizer.from_pretrained(stage)


def multilingual_whisper(folder: Path):
    """A random 51,865-token, 128-mel Whisper (1+1 layers, width 32) with a hub checkpoint's generation config."""
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
    )
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    tokenizer = multilingual_tokenizer(folder.parent / "tokenizer-stage")
    ids = tokenizer.convert_tokens_to_ids
    eot, sot, no_ts = ids("<|endoftext|>"), ids("<|startoftranscript|>"), ids("<|notimestamps|>")
    torch.manual_seed(0)
    config = WhisperConfig(
        vocab_size=51865, num_mel_bins=128, d_model=32, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        max_source_positions=1500, max_target_positions=448, bos_token_id=eot, eos_token_id=eot, pad_token_id=eot,
        decoder_start_token_id=sot, suppress_tokens=[], begin_suppress_tokens=[eot], init_std=0.2,
    )  # fmt: skip
    model = WhisperForConditionalGeneration(config)
    gen = GenerationConfig(
        bos_token_id=eot, decoder_start_token_id=sot, eos_token_id=eot, pad_token_id=eot, max_length=448,
        begin_suppress_tokens=[eot], suppress_tokens=[], forced_decoder_ids=None,
    )  # fmt: skip
    gen.no_timestamps_token_id = no_ts
    gen.is_multilingual = True
    gen.lang_to_id = {f"<|{code}|>": ids(f"<|{code}|>") for code in list(LANGUAGES)[:99]}
    gen.task_to_id = {task: ids(f"<|{task}|>") for task in ("transcribe", "translate")}
    gen.prev_sot_token_id = ids("<|startofprev|>")
    gen.return_timestamps = False
    model.generation_config = gen
    model.eval()
    processor = WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=128), tokenizer=tokenizer)
    return model, processor


def padded_clips(n: int) -> list[np.ndarray]:
    import soundfile as sf

    rows = [json.loads(line) for line in (DATASET / "eval" / "metadata.jsonl").read_text().splitlines() if line.strip()]
    clips = []
    for row in rows[:n]:
        audio, rate = sf.read(DATASET / "eval" / row["file_name"], dtype="float32")
        clips.append(np.pad(audio, (0, 30 * rate - len(audio))))
    return clips


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from mmadapt.models.ct2_export import write_ct2_whisper

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ml-51865")
    model, processor = multilingual_whisper(root / "hf")
    return model, processor, write_ct2_whisper(model, processor, root / "ct2")


@pytest.mark.parametrize("language,task", [("fr", "transcribe"), ("de", "translate")], ids=["forced", "translate"])
def test_faster_whisper_decodes_a_multilingual_export_as_transformers(exported, language, task):
    from faster_whisper.tokenizer import Tokenizer
    from faster_whisper.transcribe import get_suppressed_tokens
    from tokenizers import Tokenizer as RawTokenizer

    from mmadapt.modalities.speech.ct2_engine import max_length_for
    from mmadapt.modalities.speech.predict import greedy_decode

    model, processor, out = exported
    assert json.loads((out / "preprocessor_config.json").read_text())["feature_size"] == 128
    fw = faster_whisper.WhisperModel(str(out), device="cpu", compute_type="float32", cpu_threads=1)
    assert fw.model.is_multilingual and fw.model.n_mels == 128 and fw.feat_kwargs["feature_size"] == 128
    tok = processor.tokenizer
    ids = tok.convert_tokens_to_ids
    # the same suppressed set on both sides: faster-whisper adds its control tokens to what it is given
    timestamps = list(range(ids("<|notimestamps|>") + 1, 51865))
    fw_tokenizer = Tokenizer(RawTokenizer.from_file(str(out / "tokenizer.json")), True, task=task, language=language)
    suppress = list(get_suppressed_tokens(fw_tokenizer, timestamps))
    blank = [*tok.encode(" ", add_special_tokens=False), ids("<|endoftext|>")]  # faster-whisper's suppress_blank
    prefix = [ids("<|startoftranscript|>"), ids(f"<|{language}|>"), ids(f"<|{task}|>"), ids("<|notimestamps|>")]

    assert fw.get_prompt(fw_tokenizer, [], without_timestamps=True) == prefix, "faster-whisper's forced prefix"
    model.generation_config.suppress_tokens, model.generation_config.begin_suppress_tokens = suppress, blank

    said = 0
    for clip in padded_clips(4):
        feats = processor.feature_extractor(clip, sampling_rate=16000, return_tensors="pt").input_features
        with torch.no_grad():
            generated = model.generate(input_features=feats, language=language, task=task, max_new_tokens=CAP).tolist()[0]
            states = model.model.encoder(feats).last_hidden_state
            ours = greedy_decode(model, states, [prefix], [CAP])[0]  # mmadapt's decoder under the explicit prefix
        assert [t for t in generated if t != ids("<|endoftext|>")] == ours, "generate's language and task prefix"
        segments, info = fw.transcribe(
            clip, language=language, task=task, beam_size=1, temperature=0, without_timestamps=True,
            condition_on_previous_text=False, vad_filter=False, no_speech_threshold=None, suppress_tokens=timestamps,
            max_new_tokens=max_length_for([prefix], CAP) - len(prefix),
        )  # fmt: skip
        segments = list(segments)
        assert info.language == language and info.language_probability == 1
        theirs = [t for s in segments for t in s.tokens]
        assert theirs == ours, (tok.convert_ids_to_tokens(theirs), tok.convert_ids_to_tokens(ours))
        assert "".join(s.text for s in segments).strip() == tok.decode(ours, skip_special_tokens=True).strip()
        said += bool(ours)
    assert said >= 2, "the random model says something on most clips"
