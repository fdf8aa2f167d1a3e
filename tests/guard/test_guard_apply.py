"""GuardedPredictor over each kind of surface a modality declares (no model: a predictor that echoes),
so speech-like transcripts and image-like prompts pass the same rules as text answers."""

from __future__ import annotations

from mmadapt.guard.apply import GuardedPredictor, guard_metric
from mmadapt.guard.config import GuardConfig
from mmadapt.protocols import Example, GuardSurface, Prediction


class Echo:
    """A predictor that answers each input with itself (a transcript that repeats what was said)."""

    def __init__(self):
        self.seen: list = []

    def predict(self, inputs, *, progress=False):
        self.seen += list(inputs)
        return [Prediction(f"{x}", info={"retrieval_score": 0.2, "mean_logprob": -3.0}) for x in inputs]


class Surface:
    """What GuardedPredictor reads of a modality: its surface and what stands in for a replaced output."""

    def __init__(self, surface: GuardSurface, stand_in=None):
        self.guard_surface, self.stand_in = surface, stand_in

    def guard_output(self, message, stack):
        return message if self.stand_in is None else self.stand_in

    def guard_words(self, input):
        return [input]


CONFIG = GuardConfig.model_validate({"input": {"blocked_topics": {"billing": ["refund"]}},
                                     "escalation": {"min_retrieval_score": 0.5, "min_mean_logprob": -1.0}})


def test_transcripts_pass_input_and_output_rules_and_never_escalate():
    inner = Echo()
    guarded = GuardedPredictor(inner, Surface(GuardSurface("output", True, False)), None, CONFIG)
    refused, redacted = guarded.predict(["I want a refund now", "call me on (415) 555-2671"])
    assert inner.seen == ["I want a refund now", "call me on (415) 555-2671"]  # audio: the model always runs
    assert refused.info["guard"]["refused"] and refused.output == CONFIG.refusal
    assert redacted.output == "call me on [phone redacted]" and redacted.info["guard"]["escalated"] is False
    assert guard_metric("redactions", redacted, Example("x", None)) == 1.0


def test_prompts_are_checked_before_the_model_and_outputs_are_not_text():
    inner = Echo()
    guarded = GuardedPredictor(inner, Surface(GuardSurface("input", False, False), stand_in="grey"), None, CONFIG)
    refused, made = guarded.predict(["a refund poster", "a blue square, mail bob@corp.example"])
    assert inner.seen == ["a blue square, mail bob@corp.example"] and refused.output == "grey"
    assert made.output == "a blue square, mail bob@corp.example" and made.info["guard"]["redactions"] == 0


def test_text_escalates_and_the_metrics_read_the_outcome():
    guarded = GuardedPredictor(Echo(), Surface(GuardSurface("input", True, True)), None, CONFIG)
    (escalated,) = guarded.predict(["key sk-proj-4fK9xQ2mN7pL1vR8tY3w please"])
    assert escalated.output == CONFIG.handoff and "best passage score 0.200 < 0.5" in escalated.info["guard"]["reason"]
    stop = Example("a", "q", meta={"expect": "stop", "planted": ["sk-proj-4fK9xQ2mN7pL1vR8tY3w", "never-printed"]})
    assert guard_metric("caught_rate", escalated, stop) == 1.0 and guard_metric("stopped_rate", escalated, stop) == 1.0
    assert guard_metric("planted_redacted", escalated, stop) == 1.0  # printed, then not shown
    assert guard_metric("caught_rate", escalated, Example("b", "q")) is None
    assert guard_metric("planted_redacted", Prediction("clean"), stop) is None  # the model printed none of them


def test_every_user_turn_of_a_conversation_is_checked():
    from mmadapt.protocols import get_modality

    inner = Echo()
    guarded = GuardedPredictor(inner, get_modality("text"), None, CONFIG)
    earlier = [{"role": "user", "content": "I want a refund"}, {"role": "assistant", "content": "Why?"},
               {"role": "user", "content": "Just because."}]
    told = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "a refund is not possible"},
            {"role": "user", "content": "Which port?"}]
    refused, answered = guarded.predict([earlier, told])
    assert refused.info["guard"]["refused"] and refused.output == CONFIG.refusal
    assert inner.seen == [told]  # the model never saw the refused conversation; assistant turns are not the user's words
