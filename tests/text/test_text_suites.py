"""A suite on a real modality: a tiny-LM text version scored on a held-out set the recipe never named,
with its knowledge base still its own, a user metric beside the built-ins, and the bar it misses."""

from __future__ import annotations

import json

import mmadapt
from mmadapt.govern.suites import run_suite

USER = "tests.fixtures.user_metrics:length_ratio"


def test_a_text_version_is_scored_on_a_suite_set(make_recipe, write_recipe, tiny_lm, tmp_path):
    raw = make_recipe(
        base_model=str(tiny_lm), output_dir=str(tmp_path / "runs"),
        eval={"bootstrap": 50, "latency_samples": 0}, inference={"max_new_tokens": 4, "batch_size": 2},
    )
    version = mmadapt.run(mmadapt.load_recipe(write_recipe(raw)), progress=False).version_dir
    (tmp_path / "suite").mkdir()
    (tmp_path / "suite" / "unseen.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "u1", "question": "How much does Pro cost billed yearly?", "answer": "$149 per month.", "key_fact": "$149"},
        {"id": "u2", "question": "Is plaintext accepted on the gateway?", "answer": "No, TLS only on 7443.", "key_fact": "7443"},
        {"id": "u3", "question": "Who makes Zentrix?", "answer": "Zentrix Labs.", "key_fact": "Zentrix Labs"},
    ]))
    (tmp_path / "suite" / "s.yaml").write_text(
        f"name: s\nmodality: text\nsets: [unseen.jsonl]\nmetrics: [fact_accuracy, token_f1, '{USER}']\nbars: {{fact_accuracy: 0.9}}\n"
    )
    result = run_suite(tmp_path / "suite" / "s.yaml", [str(version), str(version)])
    one = result.targets[0].sets[0]
    assert one.set == "unseen.jsonl" and one.examples == 3 and [r["id"] for r in one.rows] == ["u1", "u2", "u3"]
    assert set(one.metrics) == {"fact_accuracy", "token_f1", USER} and one.metrics[USER] >= 0.0
    assert all(one.ci[m][0] <= one.metrics[m] <= one.ci[m][1] for m in one.metrics)
    assert result.targets[0].failures == [f"fact_accuracy {one.metrics['fact_accuracy']:.2f} < 0.90"]  # a random tiny LM
    assert all(d.diff == 0.0 and d.verdict == "no evidence" for d in result.diffs[(1, "unseen.jsonl")])  # same greedy version
