"""Helpers of the multi-process tests: recipes, a clean child environment, launcher command lines."""

import os
import socket
import sys

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK")


def write_recipe(path, *, name, model, data, output_dir, train, inference="{max_new_tokens: 6}"):
    path.write_text(
        f"name: {name}\nmodality: text\nbase_model: {model}\n"
        f"data: {{train: {data}/train.jsonl, eval: {data}/eval.jsonl}}\n"
        "strategies: {adapter: {method: lora, r: 4, alpha: 8}}\n"
        f"train: {train}\n"
        f"eval: {{latency_samples: 0, bootstrap: 0}}\ninference: {inference}\noutput_dir: {output_dir}\n"
    )
    return path


def clean_env():
    """The environment of a child process: offline, one thread each, no launcher variables of ours."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return env


def torchrun(nproc):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
