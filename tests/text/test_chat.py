"""Conversations: every data format to the same examples, the loss mask on exactly the assistant
turns of Llama-, Qwen2- and Gemma-style chat templates, bad input refused in one line, per-turn
scoring, retrieval's query."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from mmadapt.errors import DataError
from mmadapt.modalities.text import data as text_data
from mmadapt.modalities.text.chat import IGNORE, encode_conversation, retrieval_query
from mmadapt.modalities.text.metrics import score_text
from mmadapt.recipe import load_recipe
from tests.fixtures.chat_models import FAMILIES, chat_model

SYSTEM = "You are Zentrix support."
TURNS = [("Which port does the gateway use?", "Port 7443."), ("And the console?", "Port 9181."), ("Thanks!", "You are welcome.")]
CONVERSATIONS = [TURNS, TURNS[1:], [("What is the price?", "It costs $149 a month."), ("Per node?", "Yes, per node.")]]


def messages_of(turns, system=True):
    out = [{"role": "system", "content": SYSTEM}] if system else []
    for user, assistant in turns:
        out += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return out


def write_recipe(folder: Path, train: str, base: str = "unused", **data) -> Path:
    (folder / "eval.jsonl").write_text(json.dumps({"question": "Which port?", "answer": "7443"}) + "\n")
    recipe = {"name": "chat", "modality": "text", "base_model": base, "strategies": {}, "data": {"train": train, "eval": "eval.jsonl", **data}}
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return folder / "recipe.yaml"


def write_formats(folder: Path) -> dict[str, tuple[str, dict]]:
    """The same three conversations as messages JSONL, ShareGPT JSON, Alpaca JSONL, CSV (renamed
    columns), Parquet and a save_to_disk folder: {name: (path, extra data settings)}."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from datasets import Dataset

    messages = [{"id": f"c{i}", "messages": messages_of(t)} for i, t in enumerate(CONVERSATIONS)]
    roles = {"system": "system", "user": "human", "assistant": "gpt"}
    sharegpt = [
        {"id": m["id"], "conversations": [{"from": roles[x["role"]], "value": x["content"]} for x in m["messages"]]}
        for m in messages
    ]
    alpaca = [
        {"id": f"c{i}", "system": SYSTEM, "instruction": t[-1][0], "output": t[-1][1], "history": [list(p) for p in t[:-1]]}
        for i, t in enumerate(CONVERSATIONS)
    ]
    (folder / "messages.jsonl").write_text("".join(json.dumps(r) + "\n" for r in messages))
    (folder / "sharegpt.json").write_text(json.dumps(sharegpt))
    (folder / "alpaca.jsonl").write_text("".join(json.dumps(r) + "\n" for r in alpaca))
    with (folder / "export.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["id", "system", "prompt", "reply", "history"])
        writer.writeheader()
        for r in alpaca:
            writer.writerow({"id": r["id"], "system": SYSTEM, "prompt": r["instruction"], "reply": r["output"], "history": json.dumps(r["history"])})
    pq.write_table(pa.Table.from_pylist(messages), folder / "messages.parquet")
    Dataset.from_list(sharegpt).save_to_disk(str(folder / "saved"))
    return {
        "messages": ("messages.jsonl", {}),
        "sharegpt": ("sharegpt.json", {}),
        "alpaca": ("alpaca.jsonl", {}),
        "csv": ("export.csv", {"columns": {"instruction": "prompt", "output": "reply"}}),
        "parquet": ("messages.parquet", {}),
        "save_to_disk": ("saved", {}),
    }


def test_every_format_gives_the_same_conversations_and_the_same_loss(tmp_path, tiny_lm):
    import torch

    from mmadapt.modalities.text.model import TextStack, load_causal_lm
    from mmadapt.modalities.text.tuning import encode_examples, make_collate, summed_lm_loss

    model, tokenizer, info = load_causal_lm(str(tiny_lm))
    losses, inputs = {}, {}
    for name, (path, extra) in write_formats(tmp_path).items():
        recipe = load_recipe(write_recipe(tmp_path, path, str(tiny_lm), **extra))
        bundle, problems = text_data.read_data(recipe)
        assert bundle is not None, (name, problems)
        inputs[name] = [(e.input, e.reference) for e in bundle.train]
        stack = TextStack(recipe, model, tokenizer, info)
        encoded = encode_examples(stack, bundle, 512)
        batch, count = make_collate(encoded, tokenizer.pad_token_id, torch.device("cpu"))(list(range(len(encoded))))
        with torch.no_grad():
            losses[name] = float(summed_lm_loss(model, batch)) / count
    assert inputs["messages"][0][0] == messages_of(TURNS)[:-1]  # every turn before the last reply
    assert all(value == inputs["messages"] for value in inputs.values()), inputs
    assert all(value == pytest.approx(losses["messages"], rel=1e-6) for value in losses.values()), losses


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma"])
def test_loss_mask_covers_exactly_the_assistant_turns(tmp_path, family):
    import torch

    from mmadapt.modalities.text.model import load_causal_lm
    from mmadapt.modalities.text.tuning import make_collate, summed_lm_loss

    model, tokenizer, _ = load_causal_lm(str(chat_model(family, tmp_path / family)))
    conversation = messages_of(TURNS)
    ids, labels = encode_conversation(tokenizer, conversation, 512)
    learned = tokenizer.decode([t for t, label in zip(ids, labels) if label != IGNORE])
    end = FAMILIES[family][-1]
    assert learned == "".join(answer + end for _, answer in TURNS)
    # the rest is exactly the prompt side: every system/user token and the template's headers
    assert tokenizer.decode(ids) == tokenizer.apply_chat_template(conversation, tokenize=False)
    assert all(label in (IGNORE, t) for t, label in zip(ids, labels))
    batch, count = make_collate([(ids, labels)], tokenizer.pad_token_id, torch.device("cpu"))([0])
    loss = summed_lm_loss(model, batch)
    assert torch.isfinite(loss) and count == sum(label != IGNORE for label in labels[1:])


def test_eval_split_scores_every_assistant_turn(tmp_path):
    turns = messages_of(TURNS[:2])
    turns[2]["key_fact"] = "7443"
    turns[4]["accept"] = ["9181", "nine one eight one"]
    (tmp_path / "eval.jsonl").write_text(json.dumps({"id": "c", "messages": turns}) + "\n")
    examples = text_data.parse_split(tmp_path / "eval.jsonl", "eval.jsonl", "eval", [])
    assert [e.id for e in examples] == ["c#1", "c#2"]
    assert examples[1].input == [{"role": m["role"], "content": m["content"]} for m in turns[:4]]
    assert examples[0].meta["key_fact"] == "7443" and "key_fact" not in examples[1].meta
    row = score_text("The console is on 9181.", examples[1].reference, None, ["contains", "exact_match", "fact_accuracy"], examples[1].meta["accept"])
    assert row == {"contains": 1.0, "exact_match": 0.0, "fact_accuracy": None}
    assert score_text("Port 9181.", "Port 9181.", None, ["exact_match", "token_f1", "rouge_l"]) == {"exact_match": 1.0, "token_f1": 1.0, "rouge_l": 1.0}


def test_retrieval_query_takes_the_history_the_recipe_asks_for():
    conversation = messages_of(TURNS)[:-1]
    assert retrieval_query(conversation, 0) == "Thanks!"
    assert retrieval_query(conversation, 2) == "And the console?\nPort 9181.\nThanks!"
    assert retrieval_query("Which port?", 3) == "Which port?"


BAD = [
    ("messages.jsonl", {"messages": [{"role": "user", "content": "hi"}]}, "line 1: a conversation with no assistant turn"),
    ("messages.jsonl", {"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}]}, "line 1: turn 2: unknown role 'bot'"),
    ("sharegpt.jsonl", {"conversations": [{"from": "human", "value": "hi"}, {"from": "robot", "value": "yo"}]}, "unknown role 'robot'"),
]


@pytest.mark.parametrize(("name", "record", "message"), BAD)
def test_bad_conversations_are_one_line_with_their_line(tmp_path, name, record, message):
    good = {"messages": messages_of(TURNS)}
    (tmp_path / name).write_text(json.dumps(record) + "\n" + json.dumps(good) + "\n")
    with pytest.raises(DataError) as info:
        text_data.load_data(load_recipe(write_recipe(tmp_path, name)))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_csv_missing_column_and_bad_template_are_one_line(tmp_path):
    (tmp_path / "export.csv").write_text("question,reply\nWhich port?,7443\n")
    with pytest.raises(DataError, match=r"line 1: missing column 'answer' for the qa format .* fix: name it in data.columns"):
        text_data.load_data(load_recipe(write_recipe(tmp_path, "export.csv")))
    (tmp_path / "export.csv").write_text("question,answer\nWhich port?,7443\n")
    recipe = load_recipe(write_recipe(tmp_path, "export.csv", chat_template="{% for m in messages %}{{ m['content'] }"))
    with pytest.raises(DataError, match="data.chat_template does not parse"):
        text_data.load_data(recipe)


def test_cli_refuses_a_template_that_does_not_render_and_writes_nothing(tmp_path):
    from click.testing import CliRunner

    from mmadapt.cli.main import main as cli

    folder = chat_model("gemma", tmp_path / "gemma")  # Gemma's template insists on alternating roles
    two_users = [{"role": "user", "content": "hi"}, {"role": "user", "content": "port?"}, {"role": "assistant", "content": "7443"}]
    (tmp_path / "eval.jsonl").write_text(json.dumps({"messages": two_users}) + "\n")
    recipe = {"name": "chat", "modality": "text", "base_model": str(folder), "strategies": {}, "data": {"eval": "eval.jsonl"}, "output_dir": str(tmp_path / "runs")}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(cli, ["run", str(tmp_path / "recipe.yaml"), "--quiet"])
    assert result.exit_code == 2, result.output
    assert "the chat template does not render" in result.output and "Conversation roles must alternate" in result.output
    assert not list((tmp_path / "runs").glob("chat/v*")) if (tmp_path / "runs").exists() else True


def test_a_base_model_takes_the_fallback_template_and_an_override_always_wins(tmp_path):
    from mmadapt.errors import ModelError
    from mmadapt.modalities.text.chat import template_text
    from mmadapt.modalities.text.model import load_causal_lm
    from tests.fixtures.chat_models import GEMMA3, QWEN2

    base = str(chat_model("gemma", tmp_path / "base", template=False))
    with pytest.raises(ModelError, match="no chat template.*data.fallback_chat_template"):
        load_causal_lm(base)
    assert load_causal_lm(base, fallback_chat_template=GEMMA3)[1].chat_template == GEMMA3
    instruct = str(chat_model("qwen2", tmp_path / "instruct"))
    assert load_causal_lm(instruct, fallback_chat_template=GEMMA3)[1].chat_template == QWEN2
    assert load_causal_lm(instruct, chat_template=GEMMA3)[1].chat_template == GEMMA3
    (tmp_path / "turns.jinja").write_text(GEMMA3)
    (tmp_path / "q.jsonl").write_text(json.dumps({"question": "Which port?", "answer": "7443"}) + "\n")
    recipe = load_recipe(write_recipe(tmp_path, "q.jsonl", fallback_chat_template="turns.jinja"))
    assert template_text(recipe, "fallback_chat_template") == GEMMA3 and template_text(recipe) is None


def test_a_hub_id_offline_is_one_line_saying_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(write_recipe(tmp_path, "zentrix/support-chats:train"))  # not a path: accepted as a hub id
    with pytest.raises(DataError, match=r"zentrix/support-chats:train: not a file, and the hub is offline .* fix: save it with save_to_disk"):
        text_data.load_data(recipe)


@pytest.mark.parametrize(("family", "end"), [("llama", "<|eot_id|>"), ("qwen2", "<|im_end|>"), ("gemma", "<end_of_turn>")])
def test_generation_stops_at_the_templates_turn_end(family, end):
    from mmadapt.modalities.text.predict import turn_end_ids
    from tests.fixtures.chat_models import chat_tokenizer

    tokenizer = chat_tokenizer(family)
    assert turn_end_ids(tokenizer) == [tokenizer.convert_tokens_to_ids(end)]


def test_data_and_requests_share_one_parser_of_messages():
    """check_conversation reads a data file's ``messages`` and serve's request alike: the same turn
    checks and texts (a data file may use OpenAI's content parts too); only the rules differ."""
    from mmadapt.errors import RequestError
    from mmadapt.modalities.text import formats
    from mmadapt.modalities.text.chat import request_conversation

    parts = [{"role": "user", "content": [{"type": "text", "text": " Which port? "}]}, {"role": "assistant", "content": "7443"}]
    assert formats.check_conversation(parts, formats.DATA)[0] == [{"role": "user", "content": "Which port?"}, {"role": "assistant", "content": "7443"}]
    assert request_conversation(parts[:1]) == "Which port?"
    blank = [{"role": "user", "content": "x"}, {"role": "assistant", "content": " "}]
    assert formats.check_conversation(blank, formats.for_split("train"))[1] == "turn 2 (assistant): content must be a non-empty string"
    assert formats.check_conversation(blank, formats.for_split("eval"))[1] is None
    with pytest.raises(RequestError, match=r"^message 2 \(assistant\): content must be a non-empty string"):
        request_conversation([*blank, {"role": "user", "content": "y"}])
    # data: one system turn, first, and a reply to learn; a request: system/developer turns joined, ending with the question
    late = [{"role": "user", "content": "x"}, {"role": "system", "content": "s"}, {"role": "assistant", "content": "y"}]
    assert formats.check_conversation(late, formats.DATA)[1] == "turn 2: a system turn after the first"
    assert request_conversation([*late, {"role": "user", "content": "z"}])[0] == {"role": "system", "content": "s"}
    assert formats.check_conversation(late[:1] + late[2:], formats.DATA)[1] is None
    with pytest.raises(RequestError, match="the last message must be the user turn to answer"):
        request_conversation(late[:1] + late[2:])
    assert "unknown role 'developer'" in formats.check_conversation([{"role": "developer", "content": "d"}, *blank], formats.DATA)[1]
    with pytest.raises(RequestError, match="message 1: unknown role 'tool'"):
        request_conversation([{"role": "tool", "content": "x"}])
