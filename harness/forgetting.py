"""Forgetting probes on a fixed sample of general English, before vs after training.

Causal LMs: mean per-token loss on the sample (the LoRA-vs-full-fine-tuning literature measures forgetting this
way). `forgetting = loss_after - loss_before` (positive: the run made the model worse at general text).

Encoders: the bundled encoder (all-MiniLM-L6-v2) was pre-trained to embed sentences, mean-pooled, so that cosine
similarity ranks related text high. What fine-tuning can make it forget is that ranking, so the probe embeds the
sample before and after and compares the two matrices of pairwise cosine similarities:
`forgetting = 1 - Spearman's rho` between them (0: the same ranking of every pair; 1: unrelated), with
`embedding_drift = 1 - mean cos(before_i, after_i)` beside it (how far each passage's vector moved, which a
rotation of the whole space would show without any loss of ranking).

The text is Debian's `fortunes` collection (/usr/share/games/fortunes: quotations, jokes, aphorisms), which no
task uses. The sample is fixed: N_PASSAGES passages of moderate length, picked with a fixed seed from the sorted
files, each cut to MAX_TOKENS tokens, so every run of a model sees the same tokens and the numbers compare.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import torch

from harness.errors import AssetError
from harness.training_batches import keeps_labelled_logits

FORTUNES_DIR = Path("/usr/share/games/fortunes")
SKIP_FILES = {"art", "ascii-art"}  # drawings, not prose
N_PASSAGES = 64
MAX_TOKENS = 128
# Rows per forward pass of the loss probe, at most: with the passages sorted by length, batches of 8 pad the
# sample's 4,244 tokens (smollm2-135m) to 4,592 instead of 5,888 at 32 rows, and 8 x 128 tokens still fill the
# matmuls; measured here in one process, bf16: 7.3-7.9 s at 32 rows -> 5.5-5.7 s at 8, loss within 6e-4.
PROBE_BATCH_ROWS = 8
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

    The model's own loss. Two things keep it cheap without changing what is computed: passages are batched in
    order of length, a few rows at a time (`PROBE_BATCH_ROWS`; half of a 64 x 128 padded grid is padding
    otherwise), and where the model takes
    `logits_to_keep` the output head and the float32 cross-entropy over the vocabulary run only on positions
    whose next token is real (the 49k-entry vocabulary makes that most of a small model's probe). Prompt-learning
    adapters keep the plain `labels=` path: their virtual tokens shift the positions.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    keep_only = keeps_labelled_logits(model)
    batch_size = min(batch_size, PROBE_BATCH_ROWS)
    total, count = 0.0, 0
    side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    try:
        ids = tokenizer(passages, truncation=True, max_length=max_tokens)["input_ids"]
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        for start in range(0, len(order), batch_size):
            rows = [{"input_ids": ids[i]} for i in order[start:start + batch_size]]
            enc = tokenizer.pad(rows, padding=True, return_tensors="pt").to(device)
            labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
            shifted = torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:]
            keep = shifted != -100
            predicted = int(keep.sum())
            if predicted == 0:
                continue
            if keep_only:
                out = model(**enc, labels=labels, logits_to_keep=keep, shift_labels=shifted[keep], use_cache=False)
            else:
                out = model(**enc, labels=labels)
            total += out.loss.float().item() * predicted
            count += predicted
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return total / max(count, 1)


@torch.no_grad()
def sentence_embeddings(model, tokenizer, passages: list[str], batch_size: int = 16,
                        max_tokens: int = MAX_TOKENS) -> torch.Tensor:
    """(n, hidden) float32: each passage's last hidden state mean-pooled over its tokens (the pooling the bundled
    sentence encoder was trained with). Works on a plain or peft-wrapped sequence classifier."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    rows = []
    try:
        for start in range(0, len(passages), batch_size):
            enc = tokenizer(passages[start:start + batch_size], truncation=True, max_length=max_tokens,
                            padding=True, return_tensors="pt").to(device)
            hidden = model(**enc, output_hidden_states=True).hidden_states[-1].float()
            hidden = hidden[:, -enc["input_ids"].shape[1]:]  # prompt tuning prepends virtual tokens
            mask = enc["attention_mask"].unsqueeze(-1).float()
            rows.append(((hidden * mask).sum(1) / mask.sum(1)).cpu())
    finally:
        model.train(was_training)
    return torch.cat(rows)


def similarity_forgetting(before: torch.Tensor, after: torch.Tensor) -> dict[str, float]:
    """How much of the untuned encoder's similarity ranking of the sample survives (see the module docstring)."""
    from scipy.stats import spearmanr

    def pairwise(e: torch.Tensor):
        e = torch.nn.functional.normalize(e.double(), dim=-1)
        i, j = torch.triu_indices(len(e), len(e), offset=1)
        return (e @ e.T)[i, j].numpy()

    rho = float(spearmanr(pairwise(before), pairwise(after)).statistic)
    drift = 1.0 - float(torch.nn.functional.cosine_similarity(before.double(), after.double(), dim=-1).mean())
    return {"forgetting": 1.0 - rho, "embedding_drift": drift, "forgetting_probe": "sentence-similarity"}
