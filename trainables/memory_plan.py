"""How much accelerator memory a LoRA trial will need at its peak, worked out before the trial starts.

The estimate counts what a trial holds, from the model's config (a Llama-shape decoder: Llama, Mistral, Qwen2/3),
the dtype of its weights, LoRA r, the micro-batch's tokens, the attention implementation and how many decoder layers
are checkpointed:

- weights: every base parameter in the model dtype (frozen: no gradient, no optimizer state);
- LoRA/optimizer: every adapter parameter in fp32 (peft keeps adapters fp32 over a bf16 base) with its fp32
  gradient and AdamW's two fp32 moments: 16 bytes a parameter;
- activations: what autograd keeps for the backward pass, per token per decoder layer (`layer_saved_bytes_per_token`,
  counted op by op and checked against autograd's own saved tensors in the tests). A checkpointed layer keeps only
  its input, and its activations are rebuilt in the backward pass, one layer at a time;
- attention masks: a packed row's pairs must not see each other, so for sdpa and eager transformers builds a
  T x T boolean mask from the restarting position ids (flash-attention 2 and varlen take sequence boundaries
  instead and need none; FlexAttention a block mask, (T / 128)^2 block indices, a few hundred KB at 16k tokens).
  torch's sdpa turns the boolean mask into an additive one in the query's dtype on every call (the
  CPU flash kernel and CUDA's memory-efficient and cuDNN kernels alike) and keeps it for the backward pass:
  T x T x dtype bytes per layer, 0.5 GB a layer in bf16 at 16k tokens. No kernel here materialises the
  heads x T x T scores but eager attention, which keeps its fp32 softmax output (and in bf16 a bf16 copy);
- the backward pass's transient peak, the larger of: the loss (one slice of LOSS_CHUNK_TOKENS positions has its
  logits made again; its log-softmax output, that output's gradient and the logits' gradient exist at once, fp32
  [slice, vocab] each) and one decoder layer (with checkpointing its rebuilt activations, plus the temporaries
  of its LoRA linears).

The estimate is of live tensors: on a GPU, torch.cuda.max_memory_allocated(). The CUDA context (~0.5 GB) is the
budget's fixed reserve to hold; the caching allocator's fragmentation, which grows with the estimate (up to 31% of it
reserved on an H200), is `margin_bytes`, which `plan` adds.

Checked against real training on the CPU (the peak resident-set growth, benchmarks/memory_calibration.py and
tests/test_memory_plan.py): within 15% for tiny Llama models at 2k and 16k tokens, with none, some and all of their
decoder layers checkpointed.

`plan` checkpoints the fewest layers, from the first, that let the estimate plus `margin_bytes` (a share of the
estimate, for the caching allocator's fragmentation) fit the budget: each checkpointed layer costs its forward
pass again, so a card that needs 3 of 28 layers checkpointed should not pay for 28.
"""

from dataclasses import dataclass

from trainables.attention_choice import skips_masked_blocks
from trainables.settings import ATTENTION_CHOICES
from trainables.trial_contract import Checkpointing
from trainables.trial_plan import LOSS_CHUNK_TOKENS

GB = 1e9
FP32 = 4  # LoRA weights, their gradients and AdamW moments, RMSNorm's upcast input, softmax statistics, the loss
FLEX_BLOCK = 128  # FlexAttention's block: its block mask holds (T / 128)^2 block indices per row
LABELS = {"weights": "weights", "lora_optimizer": "LoRA/optimizer", "activations": "activations",
          "attention_masks": "attention masks", "backward_peak": "backward peak"}
# What a trial must leave free beyond the estimate, as a share of it: the caching allocator's fragmentation grows with
# what a trial allocates, so a fixed reserve is too thin for large ones. On an H200 (BENCHMARKS.md §5) the allocator
# reserved 1.04-1.31 times the estimate on the 13 rows that ran (it keeps freed blocks while memory is plentiful),
# and the one row planned at 1.16 times under the card (3B, 16k tokens, no checkpointing: 128.7 GB planned, 149.1 GB
# budget) ran out of memory with 121 GB allocated. 30% refuses that row and leaves room for every reserved peak
# measured; the budget's fixed 1.5 GiB (orchestrator.gpu_cards: the CUDA context, kernels) comes on top.
FRAGMENTATION_MARGIN = 0.30


def margin_bytes(estimate_bytes: int) -> int:
    """What a trial estimated at `estimate_bytes` must leave free of its budget: FRAGMENTATION_MARGIN of it."""
    return int(FRAGMENTATION_MARGIN * estimate_bytes)


class MemoryPlanError(ValueError):
    """A trial would not fit the device's memory, whatever the planner may choose."""


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a Llama-shape decoder that decide its memory."""
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied_embeddings: bool
    qkv_bias: bool = False   # Qwen2 has biases on q, k and v
    qk_norm: bool = False    # Qwen3 normalises each head's queries and keys

    @classmethod
    def from_config(cls, config) -> "ModelShape":
        """From a transformers PretrainedConfig of a Llama-shape decoder."""
        heads = config.num_attention_heads
        model_type = getattr(config, "model_type", "llama")
        return cls(hidden=config.hidden_size, intermediate=config.intermediate_size,
                   layers=config.num_hidden_layers, heads=heads,
                   kv_heads=getattr(config, "num_key_value_heads", None) or heads,
                   head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
                   vocab=config.vocab_size, tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
                   qkv_bias=bool(getattr(config, "attention_bias", model_type == "qwen2")),
                   qk_norm=model_type == "qwen3")

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def layer_linears(self) -> list[tuple[int, int]]:
        """(in, out) features of each nn.Linear of a decoder layer: q, k, v, o, gate, up, down."""
        h, i = self.hidden, self.intermediate
        return [(h, self.q_dim), (h, self.kv_dim), (h, self.kv_dim), (self.q_dim, h), (h, i), (h, i), (i, h)]

    def layer_params(self) -> int:
        weights = sum(n_in * n_out for n_in, n_out in self.layer_linears())
        biases = self.q_dim + 2 * self.kv_dim if self.qkv_bias else 0
        norms = 2 * self.hidden + (2 * self.head_dim if self.qk_norm else 0)
        return weights + biases + norms

    def base_params(self) -> int:
        embeddings = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)  # input embeddings (+ lm_head)
        return self.layers * self.layer_params() + self.hidden + embeddings          # + the final norm

    def lora_params(self, r: int) -> int:
        """peft's all-linear: A (r x in) and B (out x r) on every linear of the decoder layers; never lm_head."""
        return self.layers * sum(r * (n_in + n_out) for n_in, n_out in self.layer_linears())


@dataclass(frozen=True)
class MemoryEstimate:
    total_bytes: int
    parts: dict[str, int]  # keys of LABELS; they add up to total_bytes
    peak_phase: str        # where the backward pass peaks: "loss" or "decoder layer"

    def describe(self) -> str:
        """e.g. 'weights 6.4 GB + LoRA/optimizer 1.6 GB + activations 2.8 GB + ... = 16.9 GB' (MB for small ones)"""
        shown = [f"{LABELS[name]} {_size(size)}" for name, size in self.parts.items() if size >= 0.01 * self.total_bytes]
        return f"{' + '.join(shown)} = {_size(self.total_bytes)}"


def _size(size: float) -> str:
    return f"{size / GB:.1f} GB" if size >= 0.1 * GB else f"{size / 1e6:.1f} MB"


@dataclass(frozen=True)
class MemoryPlan:
    checkpointed_layers: int  # decoder layers checkpointed, counted from the first (0: none; all of them: "on")
    layers: int               # decoder layers of the model
    estimate: MemoryEstimate

    def describe_checkpointing(self) -> str:
        """e.g. 'activation checkpointing: 10 of 28 layers'"""
        return f"activation checkpointing: {self.checkpointed_layers} of {self.layers} layers"


def layer_saved_bytes_per_token(shape: ModelShape, a: int, r: int, attn: str) -> int:
    """Bytes autograd keeps per token for one decoder layer (a: bytes of the model dtype), T x T terms aside:

    - each RMSNorm: its input upcast to fp32 and the fp32 1/rms;
    - LoRA's A needs its input. Over a bf16 base peft casts it to fp32 once per adapted linear (q, k, v, o, gate,
      up and down each make their own copy). In fp32 nothing is cast: q/k/v share the normed input, gate/up too,
      o's input is the attention output (counted with attention) and down's is the MLP product;
    - LoRA's B needs A's output: r fp32 values for each of the 7 adapted linears;
    - attention keeps q, k, v and the output (eager: a fresh copy of it), plus fp32 log-sum-exp per head
      (not eager). With a mask (packed rows), transformers repeats k and v to every query head before sdpa, so
      they are q-sized; flash-attention 2 and varlen keep them at the kv heads, and so does FlexAttention where
      the query heads are a power of two (transformers repeats them otherwise);
    - the MLP: gate's output (SiLU's input), SiLU's output and up's output;
    - Qwen3's per-head q/k norms: fp32 copies of q and k, and their 1/rms.
    """
    h, i, q, kv, heads = shape.hidden, shape.intermediate, shape.q_dim, shape.kv_dim, shape.heads
    norms = 2 * (FP32 * h + FP32)
    lora_inputs = FP32 * (2 * h + i) if a == FP32 else FP32 * (5 * h + q + i)
    lora_a_outputs = 7 * FP32 * r
    if attn in ("flash_attention_2", "varlen"):
        attention = a * (2 * q + 2 * kv) + FP32 * heads
    elif attn == "flex_attention":
        attention = a * (2 * q + 2 * (kv if heads & (heads - 1) == 0 else q)) + FP32 * heads
    elif attn == "sdpa":
        attention = a * 4 * q + FP32 * heads
    else:  # eager: q, repeated k and v; its output copy is o's input, which bf16 LoRA copies to fp32 anyway
        attention = a * 3 * q + (a * q if a == FP32 else 0)
    mlp = 3 * a * i
    qk_norms = FP32 * (q + kv + heads + shape.kv_heads) if shape.qk_norm else 0
    return norms + lora_inputs + lora_a_outputs + attention + mlp + qk_norms


def estimate_peak(shape: ModelShape, *, weight_bytes: int, lora_r: int, tokens: int, checkpointed_layers: int,
                  attn_implementation: str = "sdpa", device_type: str = "cuda",
                  row_tokens: int | None = None) -> MemoryEstimate:
    """The peak memory of training on one micro-batch of `tokens` tokens (with the optimizer's state).

    checkpointed_layers: how many decoder layers are checkpointed, counted from the first (0 to shape.layers).

    weight_bytes: bytes of a base weight and of an activation: 2 for bf16 (CUDA), 4 for fp32 (the CPU).
    device_type: "cuda" or "cpu". The count is the same on both (the CPU's sdpa kernel keeps the same tensors as
    CUDA's memory-efficient and cuDNN kernels, masks included); flash-attention 2, varlen and FlexAttention train
    on CUDA only.
    row_tokens: tokens per row. A packed micro-batch is one row (the default); padded ones are `tokens` = B * W
    over rows of W: masks and eager's scores are then B * W * W entries.
    """
    if attn_implementation not in ATTENTION_CHOICES:
        raise ValueError(f"attn_implementation must be one of {ATTENTION_CHOICES}, got {attn_implementation!r}")
    if skips_masked_blocks(attn_implementation) and device_type != "cuda":
        raise ValueError(f"{attn_implementation} trains on CUDA GPUs only")
    if isinstance(checkpointed_layers, bool) or not 0 <= checkpointed_layers <= shape.layers:
        raise ValueError(f"checkpointed_layers must be a number of layers from 0 to {shape.layers}, "
                         f"got {checkpointed_layers!r}")
    a, t, h, layers = weight_bytes, tokens, shape.hidden, shape.layers
    square = t * (row_tokens or t)  # mask entries: each token against every token of its row
    sdpa, eager = attn_implementation == "sdpa", attn_implementation == "eager"

    per_layer = layer_saved_bytes_per_token(shape, a, lora_r, attn_implementation) * t
    # what each layer keeps of size T x T: sdpa's additive mask; eager's fp32 softmax output (and its bf16 copy)
    layer_square = a * square if sdpa else (FP32 + (a if a != FP32 else 0)) * shape.heads * square if eager else 0
    # made once per forward pass: the boolean mask (eager also an additive copy), or FlexAttention's block mask
    # (int32 block indices and their transpose for the backward pass, for partial and full blocks: 4 per block
    # pair), RoPE's cos and sin
    shared_mask = square * (1 + (a if eager else 0)) if sdpa or eager else 0
    if attn_implementation == "flex_attention":
        blocks = -(-(row_tokens or t) // FLEX_BLOCK)
        shared_mask = 4 * 4 * (t // (row_tokens or t)) * blocks * blocks
    rope = 2 * a * shape.head_dim * t

    # The backward pass starts at the loss: one slice's log-softmax output and two gradients, fp32 [slice, vocab],
    # while the final norm's saved input and 1/rms and the final hidden states the slices are cut from still exist.
    at_loss = 3 * FP32 * min(t, LOSS_CHUNK_TOKENS) * shape.vocab + (FP32 * h + FP32 + a * h) * t
    # Then each decoder layer (measured, with torch.profiler's memory timeline): while the MLP's LoRA runs, two fp32
    # [T, intermediate] temporaries beyond what the layer keeps (LoRA's output is fp32, so is its sum with the base
    # output, and their gradients); over a bf16 base also about four fp32 [T, hidden] casts between the bf16
    # residual stream and the fp32 LoRA path. Eager adds the gradients of its scores, fp32 heads x T x T twice.
    at_layer = (2 * FP32 * shape.intermediate + (4 * FP32 * h if a != FP32 else 0)) * t
    if eager:
        at_layer += 2 * FP32 * shape.heads * square
    # A checkpointed layer keeps its input only; the others keep everything (and sdpa's mask) until their backward.
    # The first k layers are the checkpointed ones: their backward runs last, when the layers after them have freed
    # their activations, so rebuilding one of them adds to the peak only when every layer is checkpointed (the last
    # k would rebuild theirs while all the others still hold theirs: one layer's activations more).
    checkpointed, kept = checkpointed_layers, layers - checkpointed_layers
    activations = kept * per_layer + checkpointed * a * h * t
    masks = shared_mask + kept * layer_square  # the shared one is held by the checkpoints until their backward
    if kept == 0:
        at_layer += per_layer + layer_square
    parts = {"weights": a * shape.base_params(), "lora_optimizer": 4 * FP32 * shape.lora_params(lora_r),
             "activations": activations + rope, "attention_masks": masks, "backward_peak": max(at_loss, at_layer)}
    return MemoryEstimate(total_bytes=sum(parts.values()), parts=parts,
                          peak_phase="loss" if at_loss >= at_layer else "decoder layer")


def plan(shape: ModelShape, *, weight_bytes: int, lora_r: int, tokens: int, budget_bytes: int,
         gradient_checkpointing: Checkpointing | str = Checkpointing.AUTO, attn_implementation: str = "sdpa", device_type: str = "cuda",
         row_tokens: int | None = None) -> MemoryPlan:
    """Decide how many decoder layers to checkpoint for a trial that must fit `budget_bytes` with the margin
    (`margin_bytes`); raise MemoryPlanError, one line, if it cannot.

    lora_r: the largest r the search space may choose (memory grows with r). gradient_checkpointing: "on" (every
    layer), "off" (none), or "auto": the fewest layers that fit, from the first (each one checkpointed costs its
    forward pass again in the backward pass, about a third more compute for that layer).
    """
    if gradient_checkpointing not in tuple(Checkpointing):
        raise ValueError(f"gradient_checkpointing must be auto, on or off, got {gradient_checkpointing!r}")

    def estimate(checkpointed: int, attn: str = attn_implementation) -> MemoryEstimate:
        return estimate_peak(shape, weight_bytes=weight_bytes, lora_r=lora_r, tokens=tokens,
                             checkpointed_layers=checkpointed, attn_implementation=attn,
                             device_type=device_type, row_tokens=row_tokens)

    def fits(needed: MemoryEstimate) -> bool:
        return needed.total_bytes + margin_bytes(needed.total_bytes) <= budget_bytes

    layers = shape.layers
    choices = {Checkpointing.AUTO: range(layers + 1), Checkpointing.ON: (layers,),
               Checkpointing.OFF: (0,)}[Checkpointing(gradient_checkpointing)]
    for checkpointed in choices:  # in order: the first that fits checkpoints the fewest layers, so recomputes least
        if fits(needed := estimate(checkpointed)):
            return MemoryPlan(checkpointed, layers, needed)
    checkpointed = choices[-1]
    worst = estimate(checkpointed)
    remedies = [f"lower --micro_batch_tokens (now {tokens}) or --max_length",
                f"a smaller r in the search space (largest r is {lora_r})"]
    if not checkpointed:
        remedies.append("--gradient_checkpointing on")
    if (device_type == "cuda" and attn_implementation != "flash_attention_2"
            and fits(estimate(checkpointed, "flash_attention_2"))):
        remedies.append("--attn_implementation flash_attention_2 (no T x T masks)")
    remedies.append("a GPU with more memory" if device_type == "cuda" else "a machine with more memory")
    which = f"with gradient checkpointing of all {layers} decoder layers" if checkpointed else \
        "without gradient checkpointing"
    raise MemoryPlanError(
        f"a LoRA trial at r={lora_r} on {tokens} tokens per micro-batch needs about {worst.total_bytes / GB:.1f} GB "
        f"of {device_type} memory {which} ({worst.describe()}) and {FRAGMENTATION_MARGIN:.0%} more for the "
        f"allocator's fragmentation, over the budget of {budget_bytes / GB:.1f} GB: {', '.join(remedies[:-1])} "
        f"or {remedies[-1]}")
