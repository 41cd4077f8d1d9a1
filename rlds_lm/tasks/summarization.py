"""The ``summarization`` task: a small synthetic world and its exact entailment oracle.

Records have ``document`` (the prompt is ``"Document: {document}\\nSummary:"``) and, when
known, ``facts`` and ``reference_summaries``; the ``grounded_summarization`` builder makes
them from the world below (:func:`make_example`), ``xsum`` from real articles. Rewards:

* ``entailment``: the exact oracle, the fraction of a summary's sentences that state a
  document fact (:func:`entailment`); needs the gold ``facts``;
* ``external_nli``: any NLI model behind ``fn(premises, hypotheses) -> P(entailment)``,
  named ``module:function`` (option ``external_nli``): the mean over the summary's
  sentences of P(document entails sentence) (:func:`sentence_mean`);
* ``nli``: the same with the learned classifier of :mod:`rlds_lm.tasks.nli`.

The world: people, cities and companies. Facts are triples ``(subject, relation,
object)``, written as text lines ``"subject|relation|object"``. Every fact is rendered
into a sentence by a fixed set of templates, and :func:`facts_in` parses sentences made by
the same templates back into triples, so :func:`entailment` is exact for text in that
language: a sentence is *supported* when its triple is among the document's facts,
*unsupported* when it parses to any other triple (a wrong city, an invented company,
...), and *unparsed* when no template matches (compound sentences, paraphrases,
gibberish).

Relations (subject type -> object type):

* ``lives_in`` person -> city, ``works_at`` person -> company,
  ``born_in_year`` person -> year, ``founded`` person -> company,
  ``headquartered_in`` company -> city.

``lives_in``, ``works_at``, ``born_in_year`` and ``headquartered_in`` have one object per
subject and ``founded`` one subject per object, so an unsupported triple that disagrees
with the document on that slot is also reported as *contradicted*.
"""

from __future__ import annotations

import importlib
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from rlds_lm.schema import content_id
from rlds_lm.tasks import registry
from rlds_lm.tasks.errors import RecordError

TASK = "summarization"
Triple = tuple[str, str, str]

FIRST_NAMES = ("Ada", "Bruno", "Chiara", "Dmitri", "Elif", "Farid", "Greta", "Hiro",
               "Ines", "Jomo", "Katya", "Luca", "Mei", "Nadia", "Omar", "Priya", "Quentin",
               "Rosa", "Sven", "Tamar", "Umar", "Vera", "Wen", "Yusuf", "Zofia")
LAST_NAMES = ("Abara", "Brandt", "Costa", "Dalton", "Eriksen", "Fujita", "Garcia",
              "Haddad", "Ivanova", "Jensen", "Kowalski", "Lindqvist", "Moreau", "Novak",
              "Okafor", "Petrov", "Quispe", "Rossi", "Sato", "Tanaka")
CITIES = ("Arden", "Belmont", "Calder", "Dunmore", "Eastwick", "Fairhaven", "Glenrock",
          "Harrowgate", "Ivybridge", "Juniper Falls", "Kingsport", "Lakemont", "Marlow",
          "Northcliff", "Oakhurst", "Port Ellis", "Queensbury", "Redmarsh", "Silverton",
          "Thornbury")
COMPANIES = ("Acme Robotics", "Bluefin Labs", "Cobalt Systems", "Dovetail Foods",
             "Ember Analytics", "Fernway Logistics", "Granite Bank", "Helix Biotech",
             "Ironleaf Games", "Juno Textiles", "Kestrel Aviation", "Lumen Optics",
             "Meridian Media", "Nimbus Cloud", "Orchid Pharma", "Pinnacle Motors")
YEARS = tuple(str(y) for y in range(1950, 2001))

RELATIONS = ("lives_in", "works_at", "born_in_year", "founded", "headquartered_in")
# Which slot is unique: "object" = one object per subject, "subject" = one per object.
_FUNCTIONAL = {"lives_in": "object", "works_at": "object", "born_in_year": "object",
               "headquartered_in": "object", "founded": "subject"}

# Canonical templates first (used in reference summaries); the others appear in documents.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "lives_in": ("{s} lives in {o}.", "{s} is a resident of {o}.",
                 "{s} makes a home in {o}."),
    "works_at": ("{s} works at {o}.", "{s} is employed by {o}.",
                 "{s} has a job at {o}."),
    "born_in_year": ("{s} was born in {o}.", "The birth year of {s} is {o}."),
    "founded": ("{s} founded {o}.", "{o} was founded by {s}."),
    "headquartered_in": ("{s} is headquartered in {o}.", "{s} has its headquarters in {o}."),
}

# Sentences about the entities that assert no relation (no template matches them).
DISTRACTORS = (
    "The weather in {city} was mild that week.",
    "A new library opened in {city} last spring.",
    "{company} announced a new product line.",
    "Shares of {company} moved little on Tuesday.",
    "{person} enjoys long walks on weekends.",
    "{person} recently read a book about {city2}.",
    "Some analysts compared {company} with {company2}.",
    "Traffic between {city} and {city2} was heavy.",
)

_NAME = r"[A-Z][A-Za-z'-]*(?: [A-Z][A-Za-z'-]*)*"
_SLOT = {"s": f"(?P<s>{_NAME})", "o": f"(?P<o>{_NAME})"}
_YEAR_SLOT = {"s": f"(?P<s>{_NAME})", "o": r"(?P<o>\d{1,4})"}


def _compile(template: str, relation: str) -> re.Pattern[str]:
  slots = _YEAR_SLOT if relation == "born_in_year" else _SLOT
  parts = re.split(r"(\{[so]\})", template)
  pattern = "".join(slots[p[1]] if p in ("{s}", "{o}") else re.escape(p) for p in parts)
  return re.compile(pattern.rstrip(r"\.") + r"\.?")


_PATTERNS = [(relation, _compile(t, relation)) for relation in RELATIONS
             for t in TEMPLATES[relation]]


def render(triple: Triple, variant: int = 0) -> str:
  """The sentence for ``triple``; ``variant`` picks a template (0 = canonical)."""
  subject, relation, obj = triple
  templates = TEMPLATES[relation]
  return templates[variant % len(templates)].format(s=subject, o=obj)


def to_line(triple: Triple) -> str:
  return "|".join(triple)


def from_line(line: str) -> Triple:
  subject, relation, obj = (part.strip() for part in line.split("|"))
  return subject, relation, obj


def sentences(text: str) -> list[str]:
  """``text`` split into sentences (at ``.``, ``!`` or ``?`` followed by space or end)."""
  text = " ".join(text.split())
  return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]


def parse_sentence(sentence: str) -> Triple | None:
  """The triple a single sentence asserts, or None when no template matches."""
  sentence = " ".join(sentence.split())
  for relation, pattern in _PATTERNS:
    match = pattern.fullmatch(sentence)
    if match:
      return match.group("s"), relation, match.group("o")
  return None


def facts_in(summary_text: str) -> list[Triple | None]:
  """One entry per sentence of ``summary_text``: its triple, or None if unparsed."""
  return [parse_sentence(s) for s in sentences(summary_text)]


def _as_triples(document_facts: str | Iterable[str | Sequence[str]]) -> set[Triple]:
  if isinstance(document_facts, str):
    document_facts = [line for line in document_facts.splitlines() if line.strip()]
  triples = set()
  for fact in document_facts:
    if isinstance(fact, bytes):
      fact = fact.decode("utf-8")
    triples.add(from_line(fact) if isinstance(fact, str) else tuple(fact))
  return triples


def entailment(document_facts: str | Iterable[str | Sequence[str]],
               summary_text: str) -> dict:
  """Checks every sentence of ``summary_text`` against ``document_facts``.

  ``document_facts``: triples, ``"s|r|o"`` lines, or one newline-separated string.
  Returns ``supported`` / ``unsupported`` (lists of triples), ``contradicted`` (the
  unsupported triples that conflict with a document fact on a unique slot),
  ``unparsed`` (sentences no template matches) and ``score``: the fraction of sentences
  that are supported (0.0 for an empty summary).
  """
  facts = _as_triples(document_facts)
  supported, unsupported, contradicted, unparsed = [], [], [], []
  for sentence in sentences(summary_text):
    triple = parse_sentence(sentence)
    if triple is None:
      unparsed.append(sentence)
    elif triple in facts:
      supported.append(triple)
    else:
      unsupported.append(triple)
      if _contradicts(triple, facts):
        contradicted.append(triple)
  total = len(supported) + len(unsupported) + len(unparsed)
  return {"supported": supported, "unsupported": unsupported,
          "contradicted": contradicted, "unparsed": unparsed,
          "score": len(supported) / total if total else 0.0}


def _contradicts(triple: Triple, facts: set[Triple]) -> bool:
  subject, relation, obj = triple
  unique = _FUNCTIONAL[relation]
  for s, r, o in facts:
    if r != relation:
      continue
    if unique == "object" and s == subject and o != obj:
      return True
    if unique == "subject" and o == obj and s != subject:
      return True
  return False


# --------------------------------------------------------------------------------------
# Example generation.
# --------------------------------------------------------------------------------------


def make_example(seed: str, index: int, num_people: tuple[int, int],
                 num_distractors: tuple[int, int], unfaithful: float = 0.0) -> dict:
  """Example ``index`` of the stream ``seed``: a pure function of its arguments.

  A few people (each with a city, an employer and a birth year), their employers'
  headquarters, sometimes a founder; the document states every fact once (in a random
  template) among distractor sentences, in a shuffled order. 1-3 reference summaries
  each state a different subset of the facts with the canonical templates.

  ``unfaithful``: the probability that a reference summary has one of its facts
  replaced by an unsupported one (:func:`unsupported_variant`: same subject and
  relation, an object the document never mentions), like the extrinsic hallucinations
  of real summarization references (XSum). 0 (the default) leaves every reference
  faithful and the examples exactly as without the option.
  """
  if not 0.0 <= unfaithful <= 1.0:
    raise ValueError(f"unfaithful must be a probability in [0, 1], found {unfaithful}")
  rng = random.Random(content_id(seed, index))
  n_people = rng.randint(*num_people)
  names = rng.sample([f"{f} {l}" for f in FIRST_NAMES for l in LAST_NAMES], n_people)
  companies = rng.sample(COMPANIES, min(n_people, len(COMPANIES)))
  facts: list[Triple] = []
  employers = []
  for person in names:
    employer = rng.choice(companies)
    employers.append(employer)
    facts.append((person, "lives_in", rng.choice(CITIES)))
    facts.append((person, "works_at", employer))
    facts.append((person, "born_in_year", rng.choice(YEARS)))
  for company in sorted(set(employers)):
    facts.append((company, "headquartered_in", rng.choice(CITIES)))
  if rng.random() < 0.5:
    facts.append((rng.choice(names), "founded", rng.choice(sorted(set(employers)))))

  lines = [render(f, rng.randrange(len(TEMPLATES[f[1]]))) for f in facts]
  for _ in range(rng.randint(*num_distractors)):
    city, city2 = rng.sample(CITIES, 2)
    company, company2 = rng.sample(COMPANIES, 2)
    lines.append(rng.choice(DISTRACTORS).format(
        city=city, city2=city2, company=company, company2=company2,
        person=rng.choice(names)))
  rng.shuffle(lines)
  document = " ".join(lines)

  summaries = []
  for _ in range(rng.randint(1, 3)):
    chosen = rng.sample(facts, rng.randint(2, min(4, len(facts))))
    chosen.sort(key=facts.index)  # in fact order: people first, one person at a time
    # Only drawn when asked for, so the faithful stream stays as it always was.
    if unfaithful and rng.random() < unfaithful:
      k = rng.randrange(len(chosen))
      chosen[k] = unsupported_variant(chosen[k], document, rng)
    summary = " ".join(render(f) for f in chosen)
    if summary not in summaries:
      summaries.append(summary)
  return {
      "prompt_id": content_id("grounded_summarization", document),
      "document": document,
      "facts": [to_line(f) for f in facts],
      "reference_summaries": summaries,
  }


def unsupported_variant(triple: Triple, document: str, rng: random.Random) -> Triple:
  """``triple`` with its object replaced by one of the same type that ``document`` never
  mentions: a fact the document does not support (an extrinsic hallucination)."""
  subject, relation, obj = triple
  pool = {"lives_in": CITIES, "headquartered_in": CITIES, "works_at": COMPANIES,
          "founded": COMPANIES, "born_in_year": YEARS}[relation]
  candidates = [o for o in pool if o != obj and o not in document]
  return subject, relation, rng.choice(candidates)


# --------------------------------------------------------------------------------------
# The task and its rewards.
# --------------------------------------------------------------------------------------


def _reference(record: Mapping[str, Any]) -> dict[str, Any]:
  return {"document": record["document"],
          "facts": list(record.get("facts", []) or []),
          "reference_summaries": list(record.get("reference_summaries", []) or [])}


@registry.register_task(TASK, field="document", reference=_reference)
def prompt(record: Mapping[str, Any]) -> str:
  """``"Document: {document}\\nSummary:"``, the prompt every summarization stage uses."""
  return f"Document: {record['document']}\nSummary:"


@registry.register_reward("entailment", task=TASK, fields=("document", "facts"))
def score_entailment(record: Mapping[str, Any], completions: Sequence[str]) -> np.ndarray:
  """float32 [n]: each summary's :func:`entailment` score against the record's facts."""
  facts = record.get("facts")
  if facts is None or len(facts) == 0:
    raise RecordError("no_reference", f"prompt {record.get('prompt_id', '?')} has no gold "
                                      f"facts (real data: use the nli scorers)")
  return np.asarray([entailment(facts, c)["score"] for c in completions], np.float32)


Predict = Callable[[list[str], list[str]], Any]


def sentence_mean(records: Sequence[Mapping[str, Any]], completions: Sequence[str],
                  predict: Predict) -> np.ndarray:
  """float32 [n]: mean P(document entails sentence) over each summary's sentences (0.0
  for a summary without any), every sentence of the batch in one ``predict`` call.

  Args:
    records: one per completion; ``document`` is the premise.
    completions: the summaries.
    predict: ``(premises, hypotheses) -> P(entailment)`` of each pair.
  """
  owners, premises, hypotheses = [], [], []
  for i, (record, text) in enumerate(zip(records, completions)):
    for sentence in sentences(text):
      owners.append(i)
      premises.append(record.get("document", ""))
      hypotheses.append(sentence)
  probabilities = np.asarray(predict(premises, hypotheses), np.float32).reshape(-1)
  if probabilities.shape != (len(hypotheses),) or not np.all(np.isfinite(probabilities)):
    raise RecordError("bad_nli_output", f"the NLI model returned {probabilities.shape} "
                                        f"values for {len(hypotheses)} sentences")
  owners = np.asarray(owners, np.int64)
  sums = np.bincount(owners, probabilities, minlength=len(completions))
  counts = np.bincount(owners, minlength=len(completions))
  return (sums / np.maximum(counts, 1)).astype(np.float32)


def score_sentence_mean(record: Mapping[str, Any], completions: Sequence[str],
                        predict: Predict) -> np.ndarray:
  """:func:`sentence_mean` of the completions of one prompt."""
  return sentence_mean([record] * len(completions), completions, predict)


def load_function(spec: str) -> Callable[..., Any]:
  """The callable named ``module:function``; ValueError if it cannot be loaded."""
  module_name, _, attr = spec.partition(":")
  if not module_name or not attr:
    raise ValueError(f"expected module:function, found {spec!r}")
  try:
    fn = getattr(importlib.import_module(module_name), attr)
  except (ImportError, AttributeError) as e:
    raise ValueError(f"cannot load external NLI function {spec!r}: {e}") from e
  if not callable(fn):
    raise ValueError(f"{spec} is not callable")
  return fn


def _load_external(external_nli: str = "") -> dict[str, Any]:
  return {"predict": load_function(external_nli)}


registry.register_reward("external_nli", task=TASK, fields=("document",),
                         options=("external_nli",), load=_load_external,
                         score_rows=sentence_mean)(score_sentence_mean)
