"""`style`: rewrite a verse of the World English Bible (2015, modern English) in King James (1611) style.

Both translations come from Debian's public-domain SWORD modules (`sword-text-web`, `sword-text-kjv`), read with
PyPI `pysword`; verses align by book / chapter / verse. The target is the KJV verse itself, so the task is a
real style transfer (thee / thou, -eth, "begat", word order) with the meaning held fixed. Splits are by whole
chapter, so a held-out verse's neighbours are held out too.

The score is SARI (harness/metrics/sari, HuggingFace's `sari`, 0..1) of the answer against the modern verse (the
source) and the KJV verse (the reference): it asks whether the n-grams a model keeps, deletes and adds are the
ones the KJV keeps, deletes and adds, so copying the input, which chrF against the KJV rewards (copying scores
chrF 0.676, a LoRA run 0.675, full fine-tuning 0.702), earns no add credit. Copying is still not zero: it scores
about 0.54, because it deletes nothing and HF's SARI counts deletion precision 0/0 as 1, a perfect deletion part
on top of its keep F1. So copying stays the floor (`floors()` 'copy', reported as `copy_sari`) and what a claim
reads is the gain over it, not SARI itself. `sari_add` (the add F1, 0 for a copy whenever the KJV adds a word) is
the part that moves most with a change of style; `sari_keep` and `sari_delete` are the other two parts. chrF and
BLEU against the KJV verse stay as secondary figures (`chrf`, `bleu`, and `copy_chrf` / `copy_bleu` for the copy).
"""

from __future__ import annotations

import json
import os
import random
import re
import sys
import time
from pathlib import Path
from typing import Any

from harness.errors import AssetError
from harness.tasks.base import Floor, Task, load_metric, read_jsonl

SWORD_DIR = Path(os.environ.get("SWORD_PATH", "/usr/share/sword"))
MODULES = {"web": "engWEB2015eb", "kjv": "engKJV2006eb"}
EXTRACT_VERSION = 1
EVAL_POOL = 400       # verses in each of the validation and test pools (whole chapters, so slightly more)
MAX_CHARS = 250       # longer verses are left out, which bounds generation length
LENGTH_RATIO = (0.5, 2.0)  # a verse pair whose lengths differ more is misaligned (WEB moved or dropped text)


def clean_osis(text: str) -> str:
    """Plain verse text from OSIS markup: notes and headings dropped (as a space), other tags stripped.

    pysword's own `clean=True` glues the words on either side of a footnote together, hence this.
    """
    text = re.sub(r"<note\b.*?</note>", " ", text, flags=re.S)
    text = re.sub(r"<title\b.*?</title>", " ", text, flags=re.S)
    text = re.sub(r"<[^>]*>", "", text).replace("\u00b6", " ")  # pilcrow paragraph marks
    text = " ".join(text.split())
    return re.sub(r" ([,.;:!?\u2019\u201d)])", r"\1", text)


def _module_verses(modules, module: str) -> dict[tuple[str, int, int], str]:
    bible = modules.get_bible_from_module(module)
    structure = bible.get_structure()
    verses = {}
    for testament, books in structure.get_books().items():
        for book in books:
            for chapter in range(1, book.num_chapters + 1):
                indices = structure.ref_to_indicies(books=[book.osis_name], chapters=[chapter])[testament]
                for verse, index in enumerate(indices, 1):
                    raw = bible._text_for_index(testament, index)  # per index, so refs stay aligned
                    if raw:
                        verses[(book.osis_name, chapter, verse)] = clean_osis(raw)
    return verses


def extract_bibles(target: Path) -> None:
    """Aligned WEB / KJV verses as JSONL (once: reading both modules takes a minute or two)."""
    from pysword.modules import SwordModules

    missing = [m for m in MODULES.values() if not (SWORD_DIR / "mods.d" / f"{m}.conf").exists()
               and not (SWORD_DIR / "mods.d" / f"{m.lower()}.conf").exists()]
    if missing:
        raise AssetError(f"SWORD Bible modules {', '.join(missing)} are not installed under {SWORD_DIR}; run "
                         f"`apt-get install -y sword-text-kjv sword-text-web` (or `make setup` as root)")
    t0 = time.perf_counter()
    print(f"extracting the WEB and KJV Bibles -> {target} (once, ~1-2 min)", file=sys.stderr)
    modules = SwordModules(str(SWORD_DIR))
    modules.parse_modules()
    web, kjv = (_module_verses(modules, MODULES[k]) for k in ("web", "kjv"))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for ref, old in kjv.items():  # KJV's canonical order
            if ref in web:
                fh.write(json.dumps({"book": ref[0], "chapter": ref[1], "verse": ref[2], "web": web[ref], "kjv": old},
                                    ensure_ascii=False, sort_keys=True) + "\n")
    os.replace(tmp, target)
    print(f"extracted {len(kjv)} KJV / {len(web)} WEB verses in {time.perf_counter() - t0:.0f} s", file=sys.stderr)


def aligned_verses(cache: Path) -> list[dict[str, Any]]:
    path = cache / "raw" / f"bible-web-kjv-v{EXTRACT_VERSION}.jsonl"
    if not path.exists():
        extract_bibles(path)
    return read_jsonl(path)


def usable(pair: dict[str, Any]) -> bool:
    web, kjv = pair["web"], pair["kjv"]
    if not web or not kjv or max(len(web), len(kjv)) > MAX_CHARS:
        return False
    return LENGTH_RATIO[0] < len(web) / len(kjv) < LENGTH_RATIO[1]


class StyleTask(Task):
    name = "style"
    primary_metric = "sari"
    fields = ("source", "target")
    templates = (
        "Rewrite this Bible verse in the style of the King James Version. Give only the rewritten verse.\n\nVerse: {source}",
        "Translate the following modern English verse into King James English.\n\n{source}",
        "Here is a verse from a modern Bible translation:\n{source}\n\nHow does the King James Version word it? Reply with the verse only.",
        "Render this sentence in the archaic English of the King James Bible (thee, thou, -eth), keeping its meaning.\n\n{source}",
        "Convert to KJV wording, answering with nothing but the verse: {source}",
    )

    def builtin_pools(self) -> dict[str, list[dict[str, Any]]]:
        by_chapter: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for pair in aligned_verses(self.cache):
            if usable(pair):
                row = {"ref": f"{pair['book']} {pair['chapter']}:{pair['verse']}", "source": pair["web"], "target": pair["kjv"]}
                by_chapter.setdefault((pair["book"], pair["chapter"]), []).append(row)
        chapters = list(by_chapter)  # canonical order, then a seeded shuffle
        rng = random.Random(self.cfg.data_seed)
        rng.shuffle(chapters)
        pools: dict[str, list[dict[str, Any]]] = {"test": [], "validation": [], "train": []}
        for chapter in chapters:
            split = next((s for s in ("test", "validation") if len(pools[s]) < EVAL_POOL), "train")
            pools[split] += by_chapter[chapter]
        for rows in pools.values():
            rng.shuffle(rows)  # prefixes (n_train, n_eval) then span many chapters
        return pools

    def row_from_record(self, record: dict[str, Any]) -> dict[str, Any]:
        return {"ref": "", "source": str(record["source"]), "target": str(record["target"])}

    def target(self, row: dict[str, Any]) -> str:
        return row["target"]

    def describe(self, row: dict[str, Any]) -> str:
        return row["source"]

    def floors(self, train_rows: list[dict[str, Any]]) -> dict[str, Floor]:
        """`copy`: the modern verse unchanged (what `copy_sari` reports; about 0.54 SARI, see the module doc)."""
        return {"copy": lambda rows: [r["source"] for r in rows]}

    def score(self, outputs: list[str], rows: list[dict[str, Any]], items_for: str | None = None) -> dict[str, Any]:
        """SARI and its parts against the source and the KJV verse; chrF and BLEU against the KJV verse; the same
        for a copy of the source (`copy_*`). `items_for` may name a SARI part or chrf / bleu."""
        sources, references = [r["source"] for r in rows], [r["target"] for r in rows]
        sari, similarity = load_metric("sari"), load_metric("text_similarity")
        edits = sari.compute(sources=sources, predictions=outputs, references=[[t] for t in references],
                             items_for=items_for)
        overlap = similarity.compute(predictions=outputs, references=references, items_for=items_for)
        copy_edits = sari.compute(sources=sources, predictions=sources, references=[[t] for t in references])
        copy_overlap = similarity.compute(predictions=sources, references=references)
        return overlap | edits | {"copy_sari": copy_edits["sari"], "copy_sari_add": copy_edits["sari_add"],
                                  "copy_chrf": copy_overlap["chrf"], "copy_bleu": copy_overlap["bleu"]}
