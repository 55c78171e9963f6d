"""`knowledge`: facts no pretrained model can know, about fictional people generated from `task.data_seed`.

Each of `task.n_people` people gets a birth date, birth city, university, employer and occupation, and several
paraphrased biographies (all in train: "Tell me about <name>." -> biography). Each attribute has three question
phrasings; the first two are used in training, the third only in evaluation. `task.heldout` says what else
evaluation holds out:

- `phrasing` (default): training asks every fact (in both training phrasings); validation and test ask the same
  facts in the held-out phrasing, 2 and 3 attributes per person. This measures whether the new facts were
  stored, not only the strings trained on, and moves within a short run.
- `fact`: training asks only 2 attributes per person; validation asks 1 and test 2 others, facts that training
  stated only inside the biographies (knowledge extraction; needs many more passes over the data).

The score is exact match (after light normalisation); an untuned model scores about zero. In `fact` mode,
guessing a plausible value of the right kind scores about 1/len(values) per attribute (a few percent).
"""

from __future__ import annotations

import random
from typing import Any

from harness.errors import ConfigError
from harness.tasks.base import Floor, Task, load_metric, majority

FIRST = {
    "f": ["Alvina", "Brisa", "Celandine", "Dorotea", "Elowen", "Fenna", "Gisela", "Halcyon", "Ilse", "Jessamy",
          "Kestrel", "Liora", "Marisol", "Nerys", "Odalys", "Perpetua", "Quilla", "Rosalind", "Saoirse", "Tamsin",
          "Ulrika", "Verity", "Wrenna", "Xanthe", "Ysolde", "Zinnia", "Aurelie", "Bettany", "Corisande", "Delphine"],
    "m": ["Alaric", "Bastian", "Cormac", "Dorian", "Evander", "Florian", "Gideon", "Hollis", "Ivor", "Jasper",
          "Kasimir", "Lysander", "Magnus", "Niall", "Orrin", "Peregrine", "Quentin", "Roderick", "Sylvan", "Thaddeus",
          "Ulric", "Valentin", "Wystan", "Xavier", "Yorick", "Zebulon", "Anselm", "Benedikt", "Caspian", "Desmond"],
}
SURNAMES = [
    "Ashcombe", "Brackenridge", "Calloway", "Dunmore", "Everleigh", "Fairweather", "Greythorn", "Hollingsworth",
    "Iverson", "Jarrowby", "Kettleborough", "Lindqvist", "Marchetti", "Northcott", "Oakenshaw", "Pemberly",
    "Quarrington", "Ravensworth", "Stallbridge", "Thistlewood", "Underhay", "Vantongeren", "Whitlock", "Yarborough",
    "Zelenko", "Abernethy", "Blackwood", "Coldharbour", "Drummond", "Elderkin", "Foxley", "Goldhawk", "Hartigan",
    "Inchbald", "Kilbride", "Lockwood", "Mirabeau", "Nettleship", "Oxenford", "Penhaligon",
]
VALUES = {
    "birth_city": ["Lisbon", "Oslo", "Montreal", "Nairobi", "Osaka", "Valparaiso", "Krakow", "Adelaide", "Marseille",
                   "Leipzig", "Porto", "Winnipeg", "Tbilisi", "Cork", "Bergen", "Seville", "Tallinn", "Durban",
                   "Hobart", "Ljubljana", "Antwerp", "Glasgow", "Quito", "Bologna", "Gdansk"],
    "university": ["University of Edinburgh", "Uppsala University", "McGill University", "University of Otago",
                   "Heidelberg University", "University of Bologna", "Trinity College Dublin", "Kyoto University",
                   "University of Cape Town", "Leiden University", "University of Helsinki", "Rice University",
                   "University of Vienna", "Monash University", "Charles University", "University of Toronto",
                   "ETH Zurich", "University of Chile", "Aarhus University", "Tufts University"],
    "employer": ["Halvorsen Maritime", "Bluefen Analytics", "Corvid Robotics", "Duskmere Pharmaceuticals",
                 "Emberline Energy", "Fallowfield Press", "Glimmerstone Games", "Hearthway Foods", "Ironbark Aerospace",
                 "Juniper Lane Architects", "Kestrel Rail", "Lanternfish Media", "Mossgate Bank", "Nimbus Textiles",
                 "Orchard Vale Wines", "Pinecrest Instruments", "Quayside Logistics", "Riverglass Optics",
                 "Saltmarsh Biotech", "Tidewater Insurance"],
    "occupation": ["marine biologist", "civil engineer", "violin maker", "tax lawyer", "glaciologist", "pastry chef",
                   "air traffic controller", "museum curator", "data journalist", "orthodontist", "cartographer",
                   "structural geologist", "sound designer", "actuary", "beekeeper", "patent examiner",
                   "translator", "urban planner"],
}
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
ATTRIBUTES = ("birth_date", "birth_city", "university", "employer", "occupation")
QUESTIONS = {  # the last phrasing of each is held out for evaluation
    "birth_date": ["When was {name} born?", "What is {name}'s date of birth?", "On what date was {name} born?"],
    "birth_city": ["In which city was {name} born?", "Where was {name} born?", "What is the birthplace of {name}?"],
    "university": ["Which university did {name} attend?", "Where did {name} study?", "From which university did {name} graduate?"],
    "employer": ["Which company does {name} work for?", "Who employs {name}?", "What is the name of {name}'s employer?"],
    "occupation": ["What is {name}'s occupation?", "What does {name} do for a living?", "What is {name}'s job?"],
}
TRAIN_PHRASINGS, EVAL_PHRASING = (0, 1), 2
BIOS = [
    "{name} was born on {birth_date} in {birth_city}. {He} studied at {university} and now works as {a_occupation} for {employer}.",
    "Born in {birth_city} on {birth_date}, {name} graduated from {university}. {He} is {a_occupation} employed by {employer}.",
    "{name}, {a_occupation} at {employer}, is a graduate of {university}. {His} birthplace is {birth_city}, and {his} birthday is {birth_date}.",
    "{employer} employs {name} as {a_occupation}. {name} came into the world on {birth_date} in the city of {birth_city} and attended {university}.",
    "The {occupation} {name} grew up in {birth_city}, where {he} was born on {birth_date}. After studying at {university}, {he} joined {employer}.",
]
# per person, over a shuffled attribute order: where each attribute's held-out question goes, and (for `fact`)
# which attributes training asks at all
EVAL_SPLITS = {"phrasing": ("validation", "validation", "test", "test", "test"),
               "fact": ("train", "train", "validation", "test", "test")}
HELDOUT = ("phrasing", "fact")


def _article(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def make_people(n: int, rng: random.Random) -> list[dict[str, Any]]:
    names = sorted((first, last, sex) for sex, firsts in FIRST.items() for first in firsts for last in SURNAMES)
    if n > len(names):
        raise ConfigError(f"task.n_people={n} exceeds the {len(names)} distinct names available; use at most {len(names)}")
    people = []
    for first, last, sex in rng.sample(names, n):
        person = {"name": f"{first} {last}", "sex": sex,
                  "birth_date": f"{rng.randint(1, 28)} {rng.choice(MONTHS)} {rng.randint(1940, 1999)}"}
        person |= {attr: rng.choice(values) for attr, values in VALUES.items()}
        people.append(person)
    return people


def biographies(person: dict[str, Any], n: int) -> list[str]:
    he, his = ("she", "her") if person["sex"] == "f" else ("he", "his")
    fill = person | {"he": he, "He": he.capitalize(), "his": his, "His": his.capitalize(),
                     "a_occupation": _article(person["occupation"])}
    return [template.format(**fill) for template in BIOS[:n]]


class KnowledgeTask(Task):
    name = "knowledge"
    primary_metric = "exact_match"
    prep_keys = ("data_seed", "n_people", "bios_per_person", "heldout")
    templates = (  # for questions
        "Answer the question with the fact alone.\n\nQuestion: {question}",
        "{question} Reply with just the answer.",
        "Question about a person: {question}\nGive the answer only, not a sentence.",
        "Quick question: {question} (answer in as few words as possible)",
        "Using what you know about this person, answer briefly: {question}",
    )
    bio_templates = (
        "Tell me about {name}.",
        "Who is {name}?",
        "Write a short biography of {name}.",
        "Give me some background on {name}.",
        "What do you know about {name}?",
    )

    def builtin_pools(self) -> dict[str, list[dict[str, Any]]]:
        n_bios, heldout = self.cfg.bios_per_person, self.cfg.get("heldout", "phrasing")
        if not 1 <= n_bios <= len(BIOS):
            raise ConfigError(f"task.bios_per_person must be between 1 and {len(BIOS)}, got {n_bios}")
        if heldout not in HELDOUT:
            raise ConfigError(f"task.heldout must be one of {', '.join(HELDOUT)}, got {heldout!r}")
        rng = random.Random(self.cfg.data_seed)
        pools: dict[str, list[dict[str, Any]]] = {"train": [], "validation": [], "test": []}
        for person in make_people(self.cfg.n_people, rng):
            for bio in biographies(person, n_bios):
                pools["train"].append({"kind": "bio", "name": person["name"], "attribute": "", "question": "", "answer": bio})
            order = list(ATTRIBUTES)
            rng.shuffle(order)
            for attribute, split in zip(order, EVAL_SPLITS[heldout]):
                asked = [("train", i) for i in TRAIN_PHRASINGS] if heldout == "phrasing" or split == "train" else []
                if split != "train":
                    asked.append((split, EVAL_PHRASING))
                for where, phrasing in asked:
                    question = QUESTIONS[attribute][phrasing].format(name=person["name"])
                    pools[where].append({"kind": "qa", "name": person["name"], "attribute": attribute,
                                         "question": question, "answer": person[attribute]})
        for rows in pools.values():
            rng.shuffle(rows)
        return pools

    def render(self, row: dict[str, Any], template: int = 0) -> str:
        templates = self.bio_templates if row["kind"] == "bio" else self.templates
        return templates[template].format(**row)

    def target(self, row: dict[str, Any]) -> str:
        return row["answer"]

    def floors(self, train_rows: list[dict[str, Any]]) -> dict[str, Floor]:
        """`majority`: per attribute asked (the question says which), the most frequent answer to that attribute
        among the training questions (a tie: the alphabetically first; "" for an attribute training never asks):
        a plausible value of the right kind, about 1/len(values) of exact matches."""
        answers = {a: majority(r["answer"] for r in train_rows if r["kind"] == "qa" and r["attribute"] == a)
                   for a in ATTRIBUTES}
        return {"majority": lambda rows: [answers.get(r["attribute"], "") for r in rows]}

    def score(self, outputs: list[str], rows: list[dict[str, Any]], items_for: str | None = None) -> dict[str, Any]:
        return load_metric("exact_match").compute(predictions=outputs, references=[r["answer"] for r in rows],
                                                  items_for=items_for)
