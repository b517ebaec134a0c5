"""Synthetic medical multiple-choice demo dataset in MedQA JSONL format.

The data exists so the runner can be exercised end to end (train, evaluate,
compare against the base model) without downloading a real benchmark. Facts
are deliberately textbook-level; the set is not meant for clinical use.

Regenerate the committed files with: ``python -m runner.rows.demo data/demo``.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import NamedTuple

LETTERS = ("A", "B", "C", "D")
TRAIN_FILE = "medmc_train.jsonl"
TEST_FILE = "medmc_test.jsonl"
# Fixed key order so regenerated files are byte-identical to committed ones.
ROW_KEYS = ("question", "options", "answer_idx", "answer", "meta_info", "id")


class Fact(NamedTuple):
    subject: str
    answer: str
    # Answers from the same category that would also be defensible for this
    # subject; they must never appear as distractors or the item is ambiguous.
    avoid: tuple[str, ...] = ()


class Category(NamedTuple):
    name: str
    train_stems: tuple[str, ...]
    # Held out so a test question is never a verbatim training question:
    # the model has to generalise the fact, not memorise the string.
    test_stem: str
    facts: tuple[Fact, ...]


CATEGORIES: tuple[Category, ...] = (
    Category(
        "pharmacology",
        (
            "What is the first-line treatment for {x}?",
            "A patient is diagnosed with {x}. Which drug should be started first?",
            "Which medication is the drug of choice for {x}?",
            "A patient is evaluated and a diagnosis of {x} is made. "
            "What is the most appropriate initial drug therapy?",
        ),
        "Which agent is preferred as initial pharmacotherapy for {x}?",
        (
            Fact("type 2 diabetes mellitus", "metformin"),
            Fact("anaphylaxis", "intramuscular epinephrine"),
            Fact("absence seizures", "ethosuximide"),
            Fact("trigeminal neuralgia", "carbamazepine"),
            Fact("primary syphilis", "benzathine penicillin G"),
            Fact("hypothyroidism", "levothyroxine"),
            Fact("chronic myeloid leukemia", "imatinib"),
            Fact("Pneumocystis jirovecii pneumonia", "trimethoprim-sulfamethoxazole"),
            Fact("status epilepticus", "intravenous lorazepam"),
            Fact("essential tremor", "propranolol"),
        ),
    ),
    Category(
        "microbiology",
        (
            "Which organism causes {x}?",
            "What is the causative agent of {x}?",
            "A patient is diagnosed with {x}. Which pathogen is responsible?",
            "A patient presents with the clinical features of {x}. "
            "Which infectious agent is responsible?",
        ),
        "Which microorganism is the etiologic agent of {x}?",
        (
            Fact("pulmonary tuberculosis", "Mycobacterium tuberculosis"),
            Fact("Lyme disease", "Borrelia burgdorferi"),
            Fact("syphilis", "Treponema pallidum"),
            Fact("cholera", "Vibrio cholerae"),
            Fact("diphtheria", "Corynebacterium diphtheriae"),
            Fact("tetanus", "Clostridium tetani"),
            Fact("whooping cough", "Bordetella pertussis"),
            Fact("infectious mononucleosis", "Epstein-Barr virus"),
            Fact("pseudomembranous colitis", "Clostridioides difficile"),
            Fact("typhoid fever", "Salmonella Typhi"),
        ),
    ),
    Category(
        "adverse_effects",
        (
            "What is a classic adverse effect of {x}?",
            "A patient is started on {x}. "
            "Which adverse effect is this drug classically associated with?",
            "Which side effect is characteristically associated with {x} therapy?",
            "A patient taking {x} should be monitored for which characteristic "
            "adverse effect?",
        ),
        "Treatment with {x} is classically complicated by which adverse effect?",
        (
            Fact("lisinopril", "dry cough"),
            Fact("isoniazid", "peripheral neuropathy", ("optic neuritis",)),
            Fact("gentamicin", "ototoxicity"),
            Fact("ethambutol", "optic neuritis", ("peripheral neuropathy",)),
            Fact("clozapine", "agranulocytosis"),
            Fact("bleomycin", "pulmonary fibrosis"),
            Fact("cyclophosphamide", "hemorrhagic cystitis",
                 ("pulmonary fibrosis", "agranulocytosis")),
            Fact("lithium", "nephrogenic diabetes insipidus"),
            Fact("ciprofloxacin", "tendon rupture", ("peripheral neuropathy",)),
            Fact("phenytoin", "gingival hyperplasia",
                 ("peripheral neuropathy", "agranulocytosis")),
        ),
    ),
    Category(
        "nutrition",
        (
            "Deficiency of which nutrient causes {x}?",
            "A patient is found to have {x}. "
            "Which nutritional deficiency is the most likely cause?",
            "Which vitamin or mineral deficiency leads to {x}?",
            "A patient presents with {x}. "
            "Supplementation of which nutrient is the appropriate treatment?",
        ),
        "Which nutrient deficiency underlies {x}?",
        (
            Fact("scurvy", "vitamin C"),
            Fact("rickets", "vitamin D"),
            Fact("beriberi", "thiamine (vitamin B1)"),
            Fact("pellagra", "niacin (vitamin B3)"),
            Fact("night blindness", "vitamin A"),
            Fact("subacute combined degeneration of the spinal cord", "vitamin B12"),
            Fact("hemorrhagic disease of the newborn", "vitamin K"),
            Fact("endemic goiter", "iodine"),
            Fact("Keshan disease", "selenium"),
            Fact("microcytic hypochromic anemia", "iron"),
        ),
    ),
    Category(
        "toxicology",
        (
            "What is the antidote for {x}?",
            "A patient presents with {x}. Which antidote should be given?",
            "Which agent is used to reverse {x}?",
            "A patient is brought to the emergency department with {x}. "
            "What is the specific antidote?",
        ),
        "Which specific antidote is indicated in {x}?",
        (
            Fact("acetaminophen overdose", "N-acetylcysteine"),
            Fact("opioid overdose", "naloxone"),
            Fact("benzodiazepine overdose", "flumazenil"),
            Fact("organophosphate poisoning", "atropine"),
            Fact("methanol poisoning", "fomepizole"),
            Fact("heparin overdose", "protamine sulfate"),
            # Atropine treats the bradycardia in both, so it is not a fair distractor.
            Fact("digoxin toxicity", "digoxin immune Fab", ("atropine",)),
            Fact("cyanide poisoning", "hydroxocobalamin"),
            Fact("iron overdose", "deferoxamine"),
            Fact("beta-blocker overdose", "glucagon", ("atropine",)),
        ),
    ),
    Category(
        "neuroanatomy",
        (
            "Injury to the {x} produces which classic finding?",
            "A patient sustains damage to the {x}. Which clinical sign is expected?",
            "Which deficit results from a lesion of the {x}?",
            "After trauma, a patient has an isolated injury of the {x}. "
            "What finding is most likely on examination?",
        ),
        "What is the characteristic clinical finding after injury to the {x}?",
        (
            Fact("radial nerve", "wrist drop"),
            Fact("common fibular nerve", "foot drop"),
            Fact("long thoracic nerve", "winged scapula"),
            Fact("ulnar nerve", "claw hand"),
            # A distal median lesion also gives a partial ("median") claw.
            Fact("median nerve at the wrist", "thenar muscle atrophy", ("claw hand",)),
            Fact("axillary nerve", "weak shoulder abduction with a flattened deltoid"),
            Fact("oculomotor nerve", "ptosis with a down-and-out eye"),
            Fact("abducens nerve", "inability to abduct the eye"),
            Fact("recurrent laryngeal nerve", "hoarseness"),
            Fact("hypoglossal nerve", "tongue deviation toward the side of the lesion"),
        ),
    ),
)


def _distractor_pool(category: Category, fact: Fact) -> list[str]:
    """Same-category answers that are wrong for ``fact``, in table order."""
    # dict.fromkeys dedupes while keeping insertion order; a set would make the
    # sample depend on string hashing, which varies between interpreter runs.
    pool = dict.fromkeys(f.answer for f in category.facts)
    banned = {fact.answer, *fact.avoid}
    candidates = [answer for answer in pool if answer not in banned]
    if len(candidates) < len(LETTERS) - 1:
        raise ValueError(f"not enough distractors for {fact.subject!r}")
    return candidates


def _make_row(
    category: Category, fact: Fact, stem: str, row_id: str, slot: int, rng: random.Random
) -> dict:
    texts = rng.sample(_distractor_pool(category, fact), len(LETTERS) - 1)
    texts.insert(slot, fact.answer)
    return {  # literal order == ROW_KEYS
        "question": stem.format(x=fact.subject),
        "options": dict(zip(LETTERS, texts)),
        "answer_idx": LETTERS[slot],
        "answer": fact.answer,
        "meta_info": category.name,
        "id": row_id,
    }


_Spec = tuple[Category, Fact, str, str]


def _specs() -> tuple[list[_Spec], list[_Spec]]:
    """(category, fact, stem, id) for every train and test question, in table order."""
    train: list[_Spec] = []
    test: list[_Spec] = []
    for category in CATEGORIES:
        for fact_no, fact in enumerate(category.facts):
            base_id = f"{category.name}-{fact_no:02d}"
            for stem_no, stem in enumerate(category.train_stems):
                train.append((category, fact, stem, f"{base_id}-train{stem_no}"))
            test.append((category, fact, category.test_stem, f"{base_id}-test"))
    return train, test


def _build(specs: list[_Spec], rng: random.Random) -> list[dict]:
    # Balanced answer letters (not independent shuffles): on a 60-row test set
    # chance skew can let a model that favours one letter look competent.
    slots = [i % len(LETTERS) for i in range(len(specs))]
    rng.shuffle(slots)
    rows = [_make_row(*spec, slot, rng) for spec, slot in zip(specs, slots)]
    # Interleave categories so any prefix (e.g. a max_samples cap) is balanced.
    rng.shuffle(rows)
    return rows


def generate(seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Return ``(train_rows, test_rows)``; identical output for identical seed.

    Every fact appears in both splits, but test rows use the category's
    held-out stem, so the test measures recall of the fact under new wording.
    """
    rng = random.Random(seed)
    train_specs, test_specs = _specs()
    return _build(train_specs, rng), _build(test_specs, rng)


def corpus() -> list[str]:
    """Text lines covering every word the demo can emit, for a tiny tokenizer."""
    lines = [
        "Question:",
        "Options:",
        "Answer:",
        "The answer is",
        "Question Answer Options Correct answer",
        " ".join(LETTERS),
        *(f"{letter}." for letter in LETTERS),
        *(f"{letter})" for letter in LETTERS),
        *(f"Answer: {letter}" for letter in LETTERS),
    ]
    for category in CATEGORIES:
        lines.append(category.name)
        for fact in category.facts:
            lines.append(fact.subject)
            lines.append(fact.answer)
            for stem in (*category.train_stems, category.test_stem):
                lines.append(stem.format(x=fact.subject))
            lines.extend(f"{letter}. {fact.answer}" for letter in LETTERS)
    return lines


def reasoning_rows(train: list[dict]) -> list[dict]:
    """The training questions again with a short reasoning trace that recalls the fact and names the
    option: the `reasoning` source of specs/smoke-reasoning.yaml (column `reasoning`). Written in the
    demo tokenizer's own words (corpus()), so a trace is a few tokens a tiny model can learn quickly."""
    facts = {(c.name, n): f for c in CATEGORIES for n, f in enumerate(c.facts)}
    out = []
    for row in train:
        fact = facts[(row["meta_info"], int(row["id"].split("-")[-2]))]
        trace = f"{fact.subject}: {fact.answer}. The answer is {row['answer_idx']}."
        out.append(row | {"reasoning": trace})
    return out


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    # newline="\n" keeps the bytes identical on every platform.
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        handle.write(text)


def write(out_dir: Path, seed: int = 0) -> list[Path]:
    """Write the train, test, instruction and reasoning JSONL files into ``out_dir``; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train, test = generate(seed)
    # Every second training fact again as an instruction: the alpaca source of specs/smoke-mix.yaml.
    alpaca = [{"instruction": "Answer the medical question in a few words.", "input": row["question"],
               "output": row["answer"][0].upper() + row["answer"][1:] + "."} for row in train[::2]]
    paths = [out_dir / TRAIN_FILE, out_dir / TEST_FILE, out_dir / "alpaca_train.jsonl",
             out_dir / PREFERENCE_FILE, out_dir / KTO_FILE, out_dir / "reasoning_train.jsonl"]
    for path, rows in zip(paths, (train, test, alpaca, preference_rows(train), kto_rows(train), reasoning_rows(train))):
        _write_jsonl(path, rows)
    return paths


PREFERENCE_FILE = "preference_train.jsonl"  # specs/smoke-dpo.yaml
KTO_FILE = "kto_train.jsonl"


def _wrong(row: dict) -> str:
    """A hedged wrong answer: the option after the answer's (so every letter is used), said unsurely.
    Every answer is also some other question's distractor, and a 2-layer random model cannot learn which
    answer goes with an unseen wording (smoke.yaml's held-out accuracy stays near chance), so the hedge
    is the preference it can carry to held-out pairs; the content is what a real model learns as well."""
    letters = sorted(row["options"])
    return "not sure, maybe " + str(row["options"][letters[(letters.index(row["answer_idx"]) + 1) % len(letters)]])


def preference_rows(train: list[dict]) -> list[dict]:
    """Every training question as a preference pair (the answer over a hedged distractor), for DPO and ORPO."""
    return [{"prompt": f"Question: {row['question']}\nAnswer:", "chosen": row["answer"], "rejected": _wrong(row),
             "id": row["id"]} for row in train]


def kto_rows(train: list[dict]) -> list[dict]:
    """Every training question with one completion, desirable (the answer) and undesirable (a hedged
    distractor) in turn, for KTO."""
    return [{"prompt": f"Question: {row['question']}\nAnswer:", "completion": row["answer"] if i % 2 == 0
             else _wrong(row), "label": i % 2 == 0, "id": row["id"]} for i, row in enumerate(train)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the synthetic MedQA-style demo set.")
    parser.add_argument("out_dir", type=Path, help="directory for the JSONL files")
    parser.add_argument("--seed", type=int, default=0, help="shuffle seed")
    args = parser.parse_args(argv)
    for path in write(args.out_dir, args.seed):
        print(path)


if __name__ == "__main__":
    main()
