"""Loading Whisper for the speech modality, and the speech stack."""

from __future__ import annotations

import hashlib
from pathlib import Path

from mmadapt.modalities.speech.language import TaskPrefix
from mmadapt.modalities.speech.predict import DEFAULT_TEMPLATE
from mmadapt.models.resolve import check_safetensors_only, load_error, pickle_trusted, resolve_model
from mmadapt.protocols import Stack


def load_whisper(ref: str, *, trust_remote_code: bool = False, allow_pickle: bool | None = None):
    """(model, processor, info) for a Whisper reference (embedded alias, hub id or folder).

    Pickle weights load only when ``allow_pickle`` (None: ``$MMADAPT_TRUST_REMOTE_PICKLE``, see models/resolve.py).
    """
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    location = resolve_model(ref)
    allow_pickle = pickle_trusted(allow_pickle)
    check_safetensors_only(location, allow_pickle=allow_pickle)
    try:
        processor = WhisperProcessor.from_pretrained(location)
        model = WhisperForConditionalGeneration.from_pretrained(
            location, dtype=torch.float32, use_safetensors=None if allow_pickle else True
        )
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise load_error(ref, exc) from None
    model.eval()
    _match_mel_bins(processor, model.config.num_mel_bins)
    config_path = Path(location) / "config.json"
    info = {
        "resolved": location,
        "revision": hashlib.sha256(config_path.read_bytes()).hexdigest()[:16] if config_path.is_file() else None,
        "parameters": int(sum(p.numel() for p in model.parameters())),
    }
    return model, processor, info


def _match_mel_bins(processor, n_mels: int) -> None:
    """The feature extractor's mel count follows the checkpoint (80, or 128 for large-v3): a folder whose
    preprocessor_config.json disagrees with its model gets a matching extractor (same STFT settings)."""
    from transformers import WhisperFeatureExtractor

    fe = processor.feature_extractor
    if fe.feature_size != n_mels:
        processor.feature_extractor = WhisperFeatureExtractor(
            feature_size=n_mels,
            sampling_rate=fe.sampling_rate,
            hop_length=fe.hop_length,
            chunk_length=fe.chunk_length,
            n_fft=fe.n_fft,
            padding_value=fe.padding_value,
        )


class SpeechStack(Stack):
    """Live state of a speech stack: Whisper, its processor, a static prompt and a term retriever."""

    def __init__(self, recipe, model, processor, base_info, vocabulary):
        super().__init__(recipe, base_info)
        self.model = model
        self.processor = processor
        self.vocabulary: list[str] = vocabulary
        self.prompt_terms: list[str] | None = None  # static decoder prompt (prompt strategy)
        self.prompt_template = DEFAULT_TEMPLATE  # a per-request vocabulary's prompt when no strategy sets one
        self.max_prompt_tokens = 200
        self.retriever = None  # per-utterance terms (retrieval strategy)
        self.shared = None  # engine.shared.SharedBase when this stack shares its base (mmadapt serve)
        self.adapter: str | None = None  # the named adapter of the shared base this stack answers with
        TaskPrefix(self)  # a language or task the checkpoint cannot do fails here, in one line
        self.boost = None  # BoostConfig (boost.py) of the prompt or retrieval strategy, or None
        self.boost_passes: set[str] = set()  # "static": boost the prompt's terms; "retrieved": the retrieved ones

    @property
    def rescores(self) -> bool:
        """Whether decoded transcripts get the rescoring pass (rescore.py): ``boost.rescore`` of a boosting strategy."""
        return self.boost is not None and self.boost.rescore
