"""Forgetting probe: mean per-token loss of a causal LM on a fixed sample of general English, before vs after
training (the LoRA-vs-full-fine-tuning literature measures forgetting this way).

The text is Debian's `fortunes` collection (/usr/share/games/fortunes: quotations, jokes, aphorisms), which no
task uses. The sample is fixed: N_PASSAGES passages of moderate length, picked with a fixed seed from the sorted
files, each cut to MAX_TOKENS tokens, so every run of a model sees the same tokens and the numbers compare.
`forgetting = loss_after - loss_before` (positive: the run made the model worse at general text).
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import torch

from harness.errors import AssetError

FORTUNES_DIR = Path("/usr/share/games/fortunes")
SKIP_FILES = {"art", "ascii-art"}  # drawings, not prose
N_PASSAGES = 64
MAX_TOKENS = 128
CHAR_RANGE = (120, 600)
SEED = 20240611


def fortune_passages(folder: Path = FORTUNES_DIR) -> list[str]:
    """Every fortune of usable length, in file-name order (the `.dat` indexes and `.u8` links skipped)."""
    files = sorted(p for p in folder.glob("*") if p.is_file() and p.suffix not in (".dat", ".u8") and p.name not in SKIP_FILES)
    if not files:
        raise AssetError(f"no fortunes under {folder}; the forgetting probe needs Debian's `fortunes` package: "
                         f"run `apt-get install -y fortunes` (or `make setup` as root)")
    passages = []
    for path in files:
        for entry in path.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            text = entry.strip().strip("%").strip()
            if CHAR_RANGE[0] <= len(text) <= CHAR_RANGE[1] and text.isascii():
                passages.append(text)
    return passages


def probe_sample(n: int = N_PASSAGES) -> list[str]:
    """The fixed held-out sample (same passages on every machine with the same fortunes package)."""
    passages = fortune_passages()
    return random.Random(SEED).sample(passages, min(n, len(passages)))


def sample_fingerprint(passages: list[str]) -> str:
    return hashlib.sha256("\n\x00".join(passages).encode()).hexdigest()[:16]


@torch.no_grad()
def probe_loss(model, tokenizer, passages: list[str], batch_size: int = 16, max_tokens: int = MAX_TOKENS) -> float:
    """Mean next-token loss over all predicted tokens of all passages (token-weighted, padding excluded).

    Uses the model's own loss (`labels=`); each batch's mean is weighted by its number of predicted tokens.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    try:
        for start in range(0, len(passages), batch_size):
            enc = tokenizer(passages[start:start + batch_size], truncation=True, max_length=max_tokens,
                            padding=True, return_tensors="pt").to(device)
            labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
            loss = model(**enc, labels=labels).loss.float().item()
            predicted = int((labels[:, 1:] != -100).sum())
            total += loss * predicted
            count += predicted
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return total / max(count, 1)
