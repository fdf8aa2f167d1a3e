"""``mmadapt plan``: peak memory per device and step-time order of a recipe's training strategies,
predicted from the model's config alone (nothing is loaded or run).

The model is described by its decoder shape (:class:`Shape`, read from a ``config.json``: vocabulary V,
hidden size h, MLP size I, layers L, query width q = heads x head_dim, key/value width k = kv_heads x
head_dim, tied embeddings). Built-in shapes for Llama-3 8B and 70B are in :data:`KNOWN`.

**Parameters.** P = V·h·(1 or 2, tied or not) + L·(2·h·q + 2·h·k + 3·h·I + 2h) + h. The linear layers of
the blocks are P_lin = L·(2·h·q + 2·h·k + 3·h·I); LoRA on all of them (``all-linear``) trains
T = L·r·((h+q) + 2·(h+k) + (q+h) + 2·(h+I) + (I+h)) weights (DoRA adds L·(q+2k+h+2I+h) magnitudes).

**Memory per device** (bytes; b = bytes of the base dtype: 4 fp32, 2 bf16/fp16):

* weights W: LoRA and full P·b (full under a 16-bit base: P·(4 + b), fp32 masters and autocast's
  16-bit copies, as text full fine-tuning trains mixed precision); QLoRA the linear layers as bitsandbytes holds them
  (:meth:`Shape.quantized_bytes`: ≈0.516 bytes a weight for 4-bit NF4 with double quantisation, 1 byte
  + an fp32 scale a row for 8-bit) + (P − P_lin)·4 (peft's ``prepare_model_for_kbit_training`` keeps the
  rest in fp32). On a CPU bitsandbytes quantises while loading (``Int8Params._quantize`` /
  ``Params4bit``): no fp16 or fp32 copy of a quantised weight stays in the model, and mmadapt copies the
  unquantised weights out of the mapped file so that it is unmapped (``release_weights_file`` in
  modalities/text/model.py; before, those views kept the file's fp32 linear weights resident: +405 MiB
  on SmolLM2 8-bit after loading, the "not identified" gap);
* trainable state S: LoRA/QLoRA T·(4 weight + 4 gradient + 8 AdamW moments) (adapters stay fp32);
  full P·(m gradient + 2m AdamW moments) beside W, m the master weights' bytes (4 under a 16-bit base); DDP keeps a gradient bucket copy (+T·b_t); on a
  CPU the trainer's AdamW is torch's foreach implementation, whose step makes sqrt(v) of every
  trainable tensor at once (one more T·4, or P·b for full: the full runs' peak, measured at 512 and
  1024 tokens alike); on a GPU it is fused, with no such copy;
  FSDP divides W and S by the N devices and holds one gathered block (W·P_lin/(P·L)) besides;
* activations A of one micro-batch of n = b_mb·s tokens (b_mb the micro-batch per device, s the
  sequence length), the distinct tensors autograd keeps (counted by storage with saved-tensor hooks
  on tiny Llamas: a frozen linear keeps no input, a LoRA layer keeps its input, which q, k and v
  share): per layer and token a Llama block keeps the two RMSNorms' inputs in fp32 (2h, 4 bytes:
  the norm upcasts; LoRA under a 16-bit base keeps them as 16-bit, exactly: n = 2) and, in the activation dtype (a = 2 under a bf16 base or bf16 autocast, else 4),
  the two norms' outputs (2h), the rotated query, the keys and values repeated to the query heads, the
  attention output and its reshaped copy (5q), the four SwiGLU intermediates (4I); full fine-tuning
  also keeps the norms' normalised inputs (+2h): B = 2h·n + a·(2h + 5q + 4I) (+ 2h·a) bytes (n = 4, or 2 as said) and
  A = n·L·B; with gradient checkpointing each block's input is kept, plus one block recomputed:
  A = n·(L·h·a + B);
* logits: mmadapt computes the LM head only at answer positions (``answer_tokens`` per sequence,
  default 32; n_a = b_mb·answer_tokens rows) and its fp32 cross-entropy a chunk of c = 256 rows at a
  time, recomputed in the backward pass (modalities/text/tuning.chunked_cross_entropy):
  n_a·V·a + min(n_a, c)·V·8 (the logits, and one chunk's fp32 copy and log-softmax);
* runtime: on a GPU the CUDA context and kernels' workspace (1 GiB); on a CPU the process itself
  (:data:`CPU_RUNTIME_MIB`, the resident size after importing torch, transformers, peft and mmadapt,
  measured here) — and on a CPU the load is a peak of its own: the safetensors file is mapped (its
  pages count as resident) while the weights are converted to the base dtype, so
  load = runtime + file + (W if the dtype differs from the file's).

training = W + S + A + logits; for full fine-tuning W + max(A + logits + G, S) with G = P·b the
gradients (written while the backward pass still holds activations: measured close to this bound)
and S = G + moments (AdamW makes its moments at the first step, after the activations are freed).
peak = runtime + max(load, training) on a CPU; runtime + training on a GPU. Measured on this
machine's CPU against SmolLM2-135M (README, Memory and speed: LoRA fp32 / bf16 / checkpointing,
full, 8-bit QLoRA) within 20% at 1024 tokens (in-sample: CPU_RUNTIME_MIB and the activation counts
were set on those runs), and out of sample at 512 and 2048 tokens, 4-bit QLoRA and gemma3-270m (−12%
at worst); one fp32 run at 2048 measured 3,030 MiB and its rerun 3,741 (+8%): an fp32 base's weights are
pages of the mapped file, which a loaded machine evicts from RSS.

**Step time (an order, not a promise).** FLOPs per step = tokens·(2P forward + 2P input gradients
+ 2P weight gradients for full only + 2P again with checkpointing) + attention 6·L·s·q per token;
QLoRA dequantises each weight on every use (×1.3). Time = FLOPs / (N · peak · MFU) (defaults: 989
TFLOP/s dense bf16 of an H100-class GPU, MFU 0.4) plus the gradient sync: DDP all-reduces the
trainable gradients (2·T·b_t bytes), FSDP all-gathers weights twice and reduce-scatters gradients
(≈3·P·b bytes for full, 3·T·4 for LoRA), at ``link_gbps`` (default 200 GB/s).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from mmadapt.errors import MmadaptError

GIB = 2**30
MIB = 2**20
CPU_RUNTIME_MIB = 760  # RSS after `import torch, transformers, peft, mmadapt.modalities.text` (torch 2.11, 2-core CPU)
GPU_RUNTIME_MIB = 1024
LOSS_CHUNK_ROWS = 256  # rows of one fp32 cross-entropy chunk: modalities/text/tuning.LOSS_CHUNK (tests/core/test_plan.py)
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


@dataclass(frozen=True)
class Shape:
    """A decoder's shape, as a transformers config.json gives it."""

    vocab: int
    hidden: int
    intermediate: int
    layers: int
    q_width: int
    kv_width: int
    tied: bool
    file_bytes_per_param: int = 4  # the dtype of the weights on disk (the load peak on a CPU)
    narrowed_16bit: bool = False  # a float32 folder in mmadapt's cache: a 16-bit base loads its 16-bit copy (models/narrow.py)

    @classmethod
    def from_config(cls, config: dict) -> Shape:
        try:
            h, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
            head_dim = int(config.get("head_dim") or h // heads)
            kv_heads = int(config.get("num_key_value_heads") or heads)
            dtype = str(config.get("dtype") or config.get("torch_dtype") or "float32")
            return cls(
                vocab=int(config["vocab_size"]), hidden=h, intermediate=int(config["intermediate_size"]),
                layers=int(config["num_hidden_layers"]), q_width=heads * head_dim, kv_width=kv_heads * head_dim,
                tied=bool(config.get("tie_word_embeddings", False)), file_bytes_per_param=4 if "32" in dtype else 2,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise MmadaptError(f"the model config lacks a decoder's shape ({exc})", fix="pass a causal LM's config.json") from None

    @property
    def linear_params(self) -> int:
        h, q, k, i = self.hidden, self.q_width, self.kv_width, self.intermediate
        return self.layers * (2 * h * q + 2 * h * k + 3 * h * i)

    @property
    def params(self) -> int:
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return embeddings + self.linear_params + self.layers * 2 * self.hidden + self.hidden

    @property
    def linear_rows(self) -> int:
        """The output rows of the blocks' linear layers (q, k, v, o, gate, up, down)."""
        return self.layers * (self.q_width + 2 * self.kv_width + self.hidden + 2 * self.intermediate + self.hidden)

    def quantized_bytes(self, bits: str) -> float:
        """Bytes of the blocks' linear layers as bitsandbytes holds them (counted from its tensors on a
        loaded model, tests/core/test_plan.py): 8-bit (LLM.int8) one int8 a weight and one fp32 scale a
        row (``Int8Params.SCB``); 4-bit NF4 with double quantisation two weights a byte, a uint8 absmax a
        block of 64, an fp32 absmax a block of 256 of those, and a 256-entry fp32 code table a layer."""
        if bits == "8bit":
            return self.linear_params + 4 * self.linear_rows
        return self.linear_params * (0.5 + 1 / 64 + 4 / (64 * 256)) + 7 * self.layers * 256 * 4

    def lora_params(self, r: int, dora: bool = False) -> int:
        h, q, k, i = self.hidden, self.q_width, self.kv_width, self.intermediate
        per_layer = r * ((h + q) + 2 * (h + k) + (q + h) + 2 * (h + i) + (i + h))
        return self.layers * (per_layer + ((q + 2 * k + h + 2 * i + h) if dora else 0))

    def activation_bytes(self, act: int, full: bool = False, norm: int = 4) -> int:
        """Bytes one Llama block keeps per token for the backward pass (module docstring: the RMSNorm
        inputs in ``norm`` bytes — their fp32 upcasts, kept as 16-bit under a 16-bit base —, the rest in
        the activation dtype of ``act`` bytes; full training keeps the norms' normalised inputs too)."""
        h, q, i = self.hidden, self.q_width, self.intermediate
        return 2 * h * norm + act * (2 * h + 5 * q + 4 * i + (2 * h if full else 0))


# Llama-3 8B and 70B (meta-llama/Meta-Llama-3-*/config.json), written out: plan needs no download
KNOWN: dict[str, dict] = {
    "llama-3-8b": {"vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                   "num_attention_heads": 32, "num_key_value_heads": 8, "tie_word_embeddings": False, "torch_dtype": "bfloat16"},
    "llama-3-70b": {"vocab_size": 128256, "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
                    "num_attention_heads": 64, "num_key_value_heads": 8, "tie_word_embeddings": False, "torch_dtype": "bfloat16"},
}


@dataclass(frozen=True)
class Setup:
    """One way to train: method, precision, memory knobs and devices."""

    method: str = "lora"  # lora | qlora-4bit | qlora-8bit | full
    dtype: str = "fp32"  # the base weights (model.dtype)
    autocast_bf16: bool = False  # train.precision: bf16
    checkpointing: bool = False
    r: int = 8
    dora: bool = False
    seq_len: float = 512
    micro_batch: int = 8  # sequences per forward pass on one device
    batch: int = 8  # global sequences per optimizer step
    answer_tokens: int = 32
    devices: int = 1
    parallel: str = "ddp"  # ddp | fsdp (with devices > 1)
    device: str = "gpu"  # gpu | cpu


@dataclass(frozen=True)
class Prediction:
    setup: Setup
    weights: float
    state: float
    activations: float
    logits: float
    runtime: float
    load: float
    gradients: float  # full fine-tuning: the part of ``state`` that exists during the backward pass
    step_seconds: float
    trainable: int

    @property
    def peak_bytes(self) -> float:
        train = self.weights + self.state + self.activations + self.logits
        if self.setup.method == "full":  # the AdamW moments are made after the backward freed the activations
            train = self.weights + max(self.activations + self.logits + self.gradients, self.state)
        return self.runtime + (max(self.load, train) if self.setup.device == "cpu" else train)

    @property
    def peak_mib(self) -> float:
        return self.peak_bytes / MIB


def predict(shape: Shape, setup: Setup, *, tflops: float = 989.0, mfu: float = 0.4, link_gbps: float = 200.0) -> Prediction:
    """Peak memory per device and step time of training ``shape`` as ``setup`` says (formulas: module docstring)."""
    b = DTYPE_BYTES[setup.dtype]
    act = 2 if (setup.dtype != "fp32" or setup.autocast_bf16) else 4
    full = setup.method == "full"
    shard = setup.devices if (setup.devices > 1 and setup.parallel == "fsdp") else 1
    if setup.method.startswith("qlora"):
        weights = shape.quantized_bytes(setup.method.split("-")[1]) + (shape.params - shape.linear_params) * 4
    else:
        weights = shape.params * b
    loaded = weights  # what the load builds beside the mapped file (below)
    # text full fine-tuning under a 16-bit base trains fp32 master weights under autocast
    # (modalities/text/full.py): the masters plus autocast's 16-bit copies of them during a step
    master = 4 if full and b == 2 else b
    if full and b == 2:
        weights = shape.params * (master + b)
    if shard > 1:  # FSDP shards every weight, frozen or not, and gathers one block at a time
        weights = weights / shard + weights * shape.linear_params / shape.params / shape.layers
    # the trainer's AdamW is fused on a GPU; on a CPU it is foreach, whose step holds sqrt(v) of every
    # trainable tensor at once (torch.optim.adam._multi_tensor_adam: exp_avg_sq_sqrt) beside the moments
    step_temp = 1 if setup.device == "cpu" else 0
    if full:
        trainable, grad_bytes = shape.params, master
        gradients = trainable * master / shard
        state = gradients * (3 + step_temp)  # gradient + two AdamW moments, in the master weights' dtype
    else:
        trainable, grad_bytes = shape.lora_params(setup.r, setup.dora), 4
        state, gradients = trainable * (16 + 4 * step_temp) / shard, 0.0
    if setup.devices > 1 and setup.parallel == "ddp":
        state += trainable * grad_bytes  # DDP's gradient buckets
        gradients += trainable * grad_bytes if full else 0.0
    micro = min(setup.micro_batch, max(1, setup.batch // setup.devices))
    tokens = micro * setup.seq_len
    # LoRA on a 16-bit base: mmadapt keeps the norms' fp32 upcasts of the 16-bit residual stream in 16
    # bits, exactly (modalities/text/tuning.saved_float32_narrowed); full training's residual is fp32
    norm = 2 if b == 2 and setup.method == "lora" else 4
    block = shape.activation_bytes(act, full, norm)
    per_token = shape.layers * shape.hidden * act + block if setup.checkpointing else shape.layers * block
    activations = tokens * per_token
    answer_rows = micro * min(setup.answer_tokens, setup.seq_len)
    logits = answer_rows * shape.vocab * act + min(answer_rows, LOSS_CHUNK_ROWS) * shape.vocab * 8
    runtime = (CPU_RUNTIME_MIB if setup.device == "cpu" else GPU_RUNTIME_MIB) * MIB
    on_disk = b if shape.narrowed_16bit and b == 2 and not setup.method.startswith("qlora") else shape.file_bytes_per_param
    file = shape.params * on_disk
    load = file + (loaded if b != on_disk or setup.method.startswith("qlora") else 0)
    step_tokens = setup.batch * setup.seq_len
    passes = 2 + 2 + (2 if full else 0) + (2 if setup.checkpointing else 0)
    flops = step_tokens * (passes * shape.params + 6 * shape.layers * setup.seq_len * shape.q_width)
    flops *= 1.3 if setup.method.startswith("qlora") else 1.0
    compute = flops / (setup.devices * tflops * 1e12 * mfu)
    if setup.devices == 1:
        sync = 0.0
    elif setup.parallel == "ddp":
        sync = 2 * trainable * grad_bytes / (link_gbps * 1e9)
    else:
        sync = 3 * trainable * (b if full else 4) / (link_gbps * 1e9)
    return Prediction(setup, weights, state, activations, logits, runtime, load, gradients, compute + sync, trainable)


def load_shape(ref: str) -> Shape:
    """A Shape from a built-in name (llama-3-8b, llama-3-70b), a config.json, a model folder, or a model
    reference mmadapt resolves (embedded:NAME, a hub id where a hub answers)."""
    if ref in KNOWN:
        return Shape.from_config(KNOWN[ref])
    path = Path(ref).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        from mmadapt.models.resolve import resolve_model

        path = Path(resolve_model(ref)) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MmadaptError(f"cannot read the model config: {exc}", path=path, fix="pass a config.json or a model folder") from None
    shape = Shape.from_config(config.get("text_config", config))
    from mmadapt.models.narrow import narrowable

    return replace(shape, narrowed_16bit=narrowable(str(path.parent)))


def recipe_setups(recipe, *, devices: int = 1, device: str = "gpu", seq_len: float | None = None) -> list[Setup]:
    """The setups a recipe trains: its adapter (LoRA or QLoRA) and full strategies (from its stack or
    ``compare.strategies``), with its dtype, precision, checkpointing and batch, under DDP and FSDP."""
    train = recipe.train
    base = Setup(
        dtype=recipe.model.dtype, autocast_bf16=train.precision == "bf16", checkpointing=train.gradient_checkpointing,
        seq_len=seq_len or train.max_seq_len, batch=train.batch_size, micro_batch=train.micro_batch_size or train.batch_size,
        devices=devices, device=device,
    )
    sections = {**recipe.compare_strategies, **recipe.strategies}
    setups = []
    for name, section in sections.items():
        if name == "adapter" and section.model_dump().get("method", "lora") == "lora":
            fields = section.model_dump()
            quantize = fields.get("quantize", "none")
            method = "lora" if quantize == "none" else f"qlora-{quantize}"
            setups.append(replace(base, method=method, r=int(fields.get("r", 8)), dora=bool(fields.get("use_dora", False))))
        elif name == "full":
            setups.append(replace(base, method="full"))
    if not setups:
        setups = [replace(base, method="lora"), replace(base, method="full")]
    if devices > 1:
        setups = [replace(s, parallel=p) for s in setups for p in ("ddp", "fsdp")]
    return setups


def predict_run(recipe, *, seq_len: float | None = None) -> Prediction:
    """The prediction for the recipe's own training strategy on this machine's CPU (bench/text_memory.py)."""
    shape = load_shape(recipe.base_model)
    setups = [s for s in recipe_setups(recipe, device="cpu", seq_len=seq_len) if (s.method == "full") == ("full" in recipe.strategies)]
    return predict(shape, setups[0])


def describe(setup: Setup) -> str:
    parts = [setup.method if setup.method != "lora" else f"lora r{setup.r}", setup.dtype]
    if setup.autocast_bf16:
        parts.append("bf16 autocast")
    if setup.checkpointing:
        parts.append("checkpointing")
    if setup.devices > 1:
        parts.append(f"{setup.parallel} x{setup.devices}")
    return ", ".join(parts)


def parse_size(text: str) -> float:
    """'80GiB', '80GB', '80' (GiB) -> bytes (``--gpu-memory`` of plan and advise)."""
    import re

    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(GiB|GB|MiB|MB|TiB|TB)?\s*", str(text))
    if not match:
        raise MmadaptError(f"--gpu-memory {text!r} is not a size", fix="write it like 80GiB, 24GB or 40")
    unit = match.group(2) or "GiB"
    return float(match.group(1)) * {"GiB": 2**30, "GB": 1e9, "MiB": 2**20, "MB": 1e6, "TiB": 2**40, "TB": 1e12}[unit]


def with_alternatives(setups: list[Setup]) -> list[Setup]:
    """The setups a recipe trains, then the other methods beside them (LoRA, QLoRA 4-bit, full; DDP and FSDP
    with more than one device), then the memory knobs it could turn on (a bf16 base, gradient checkpointing)."""
    methods = {s.method for s in setups}
    others = [replace(setups[0], method=m, r=8) for m in ("lora", "qlora-4bit", "full") if m not in methods and not any(
        s.method.startswith(m.split("-")[0]) for s in setups)]
    setups = [*setups, *(replace(o, parallel=p) for o in others for p in (("ddp", "fsdp") if o.devices > 1 else ("ddp",)))]
    extra = [replace(s, dtype="bf16") for s in setups if s.dtype == "fp32" and not s.method.startswith("qlora")]
    extra += [replace(s, checkpointing=True) for s in [*setups, *extra] if not s.checkpointing]
    return [*setups, *extra]
