"""The ceiling for one trial: a bare transformers + peft LoRA loop, nothing else.

Same model folder, same tokenized pairs, same steps and micro-batches as a trial with these
settings and `--packing off` (the trial's seeded order, right-padded to the longest pair); no
evaluation, no checkpoints, no Ray. Batches are built before the clock starts.

    python benchmarks/bare_loop.py --model_dir DIR --data train.jsonl --batch_size 8 --threads 1

Prints one JSON object: tokens trained, seconds in the loop, tokens/s, peak RSS.
"""

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from trainables.data import read_pairs, tokenize_split  # noqa: E402
from trainables.packing import auto_tokens_per_step, plan_steps  # noqa: E402


def padded_batch(split, indices):
    rows = [split.pair(int(i)) for i in indices]
    width = max(len(ids) for ids, _ in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for row, (tokens, prompt_len) in enumerate(rows):
        ids[row, :len(tokens)] = torch.from_numpy(tokens.astype("int64"))
        mask[row, :len(tokens)] = 1
        labels[row, prompt_len:len(tokens)] = ids[row, prompt_len:len(tokens)]
    return ids, mask, labels


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model_dir", required=True)
    ap.add_argument("--data", required=True, help="JSONL of the training pairs")
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--accumulation_steps", type=int, default=1)
    ap.add_argument("--num_epochs", type=int, default=1)
    ap.add_argument("--learning_rate", type=float, default=1e-4)
    ap.add_argument("--r", type=int, default=32)
    ap.add_argument("--alpha", type=int, default=16)
    ap.add_argument("--max_length", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir, local_files_only=True)
    split = tokenize_split(tokenizer, read_pairs(args.data), args.max_length)
    lengths = np.diff(split.offsets)
    plan = plan_steps(lengths, auto_tokens_per_step(lengths, args.batch_size * args.accumulation_steps),
                      args.num_epochs, args.seed, packing=False, micro_batch_tokens=0, batch_size=args.batch_size)
    # (batch, micro-batches in its step, whether it ends the step)
    batches = [(padded_batch(split, pairs), len(step), k + 1 == len(step))
               for step in plan.steps for k, pairs in enumerate(step)]

    base = AutoModelForCausalLM.from_pretrained(args.model_dir, use_safetensors=True, local_files_only=True)
    model = get_peft_model(base, LoraConfig(r=args.r, lora_alpha=args.alpha, target_modules="all-linear",
                                            lora_dropout=0.0, bias="none", task_type="CAUSAL_LM"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.learning_rate,
                                  weight_decay=0.01)
    model.train()
    tokens = 0
    start = time.perf_counter()
    for (ids, mask, labels), in_step, ends_step in batches:
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        (loss / in_step).backward()
        if ends_step:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        tokens += int(mask.sum())
    elapsed = time.perf_counter() - start
    print(json.dumps({
        "tokens": tokens, "micro_batches": len(batches), "loop_s": round(elapsed, 3),
        "tokens_per_s": round(tokens / elapsed, 1), "final_train_loss": round(loss.item(), 4),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }))


if __name__ == "__main__":
    main()
