"""A small learned NLI classifier: the "NLI reward model" of the synthetic world.

Real summarization-RL setups (RLEF) reward a summary by the probability that an NLI model
says the document entails it. Here the model is a logistic regression over lexical
features of a (premise, hypothesis) pair, trained with JAX + optax on pairs generated
from the grounded-summarization world: hypotheses that state a document fact (label 1)
and corrupted ones that swap in another entity from the document or from outside it
(label 0). Its features see entity overlap, not relations, so it is wrong in the ways
real NLI models are (a distractor sentence naming the same two entities fools it); the
exact oracle (:func:`rlds_lm.tasks.summarization.entailment`) measures how wrong.

The reward ``nli`` (option ``nli_model``: a model directory) scores a summary by the mean
over its sentences of P(document entails sentence).

Features of a pair (:func:`features`): the fraction of the hypothesis's entities (names,
numbers) found in the premise; the same within the best-matching premise sentence; the
fraction of the hypothesis's words in that sentence; and a hashed bag of the
hypothesis's lower-case words (the relation cue).

Train and evaluate::

    python -m pipelines.nli train --out nli_model --examples 2000 --seed 0

(the command line lives with the stages; :func:`main` is its implementation).

The model directory holds ``weights.npz`` and ``model.json`` (feature config, training
data size and seed, held-out accuracy, digest). Inference is NumPy only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rlds_lm.tasks import registry
from rlds_lm.tasks import summarization as world

HASH_DIM = 64
NUM_DENSE = 3
FORMAT = "rlds_lm.nli_logreg.v1"
_ENTITY = re.compile(r"[A-Z][A-Za-z'-]*(?: [A-Z][A-Za-z'-]*)*|\d+")
_WORD = re.compile(r"[a-z]+|\d+")


def _entities(text: str) -> set[str]:
  # A sentence-initial capital on an ordinary word ("The") is not an entity of interest,
  # but keeping it is harmless: both sides of the pair are treated alike.
  return set(_ENTITY.findall(text))


def _words(text: str) -> set[str]:
  return set(_WORD.findall(text.lower()))


def _bucket(word: str) -> int:
  return int.from_bytes(hashlib.md5(word.encode()).digest()[:4], "little") % HASH_DIM


def features(premise: str, hypothesis: str) -> np.ndarray:
  """float32 [NUM_DENSE + HASH_DIM]: the pair's features (see the module docstring)."""
  entities = _entities(hypothesis)
  words = _words(hypothesis)
  premise_sentences = world.sentences(premise) or [premise]
  in_doc = (sum(e in premise for e in entities) / len(entities)) if entities else 0.0
  best_entities, best_words = 0.0, 0.0
  for sentence in premise_sentences:
    e = (sum(x in sentence for x in entities) / len(entities)) if entities else 0.0
    w = (len(words & _words(sentence)) / len(words)) if words else 0.0
    if (e, w) > (best_entities, best_words):
      best_entities, best_words = e, w
  out = np.zeros(NUM_DENSE + HASH_DIM, np.float32)
  out[:NUM_DENSE] = (in_doc, best_entities, best_words)
  for word in words:
    out[NUM_DENSE + _bucket(word)] = 1.0
  return out


def training_pairs(count: int, seed: int) -> list[tuple[str, str, int]]:
  """``count`` (premise, hypothesis, label) pairs from the synthetic world, half positive."""
  rng = random.Random(seed)
  pairs: list[tuple[str, str, int]] = []
  index = 0
  while len(pairs) < count:
    example = world.make_example(f"nli-{seed}", index, (2, 3), (1, 3))
    index += 1
    facts = [world.from_line(f) for f in example["facts"]]
    document = example["document"]
    people = sorted({s for s, r, _ in facts if r != "headquartered_in"})
    for subject, relation, obj in facts:
      pairs.append((document, world.render((subject, relation, obj)), 1))
      kind = rng.random()
      if relation == "born_in_year":
        pool = [o for s, r, o in facts if r == relation and o != obj] or list(world.YEARS)
      elif relation in ("lives_in", "headquartered_in"):
        pool = [c for c in world.CITIES if c != obj]
        in_doc = [c for c in pool if c in document]
        pool = in_doc if (kind < 0.6 and in_doc) else pool
      elif relation == "works_at":
        pool = [c for c in world.COMPANIES if c != obj]
        in_doc = [c for c in pool if c in document]
        pool = in_doc if (kind < 0.6 and in_doc) else pool
      else:  # founded: swap the founder
        pool = [p for p in people if p != subject] or ["Nobody Known"]
        negative = (rng.choice(pool), relation, obj)
        if negative not in facts:
          pairs.append((document, world.render(negative), 0))
        continue
      negative = (subject, relation, rng.choice(pool))
      if negative not in facts:
        pairs.append((document, world.render(negative), 0))
  return pairs[:count]


def _matrix(pairs: Sequence[tuple[str, str, int]]) -> tuple[np.ndarray, np.ndarray]:
  x = np.stack([features(p, h) for p, h, _ in pairs])
  y = np.asarray([label for _, _, label in pairs], np.float32)
  return x, y


def train(count: int = 2000, seed: int = 0, steps: int = 300, learning_rate: float = 0.1,
          l2: float = 1e-3) -> tuple[np.ndarray, float, dict]:
  """Fits the logistic regression (full-batch Adam); returns (weights, bias, report)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  x, y = _matrix(training_pairs(count, seed))
  x_test, y_test = _matrix(training_pairs(max(200, count // 4), seed + 1_000_003))
  params = {"w": jnp.zeros(x.shape[1], jnp.float32), "b": jnp.zeros((), jnp.float32)}
  optimizer = optax.adam(learning_rate)
  state = optimizer.init(params)

  def loss_fn(p, xb, yb):
    logits = xb @ p["w"] + p["b"]
    return optax.sigmoid_binary_cross_entropy(logits, yb).mean() + l2 * jnp.sum(p["w"] ** 2)

  @jax.jit
  def step(p, s, xb, yb):
    loss, grads = jax.value_and_grad(loss_fn)(p, xb, yb)
    updates, s = optimizer.update(grads, s, p)
    return optax.apply_updates(p, updates), s, loss

  for _ in range(steps):
    params, state, loss = step(params, state, x, y)
  w, b = np.asarray(params["w"]), float(params["b"])

  def accuracy(xs, ys):
    return float(np.mean(((xs @ w + b) > 0) == (ys > 0.5)))

  report = {"train_pairs": len(y), "test_pairs": len(y_test), "seed": seed,
            "steps": steps, "final_loss": float(loss),
            "train_accuracy": accuracy(x, y), "test_accuracy": accuracy(x_test, y_test)}
  return w, b, report


class NliClassifier:
  """P(premise entails hypothesis) from a trained model directory."""

  def __init__(self, weights: np.ndarray, bias: float, meta: dict | None = None):
    if weights.shape != (NUM_DENSE + HASH_DIM,):
      raise ValueError(f"NLI weights must have shape {(NUM_DENSE + HASH_DIM,)}, found "
                       f"{weights.shape}")
    self.weights = weights.astype(np.float32)
    self.bias = float(bias)
    self.meta = dict(meta or {})

  @property
  def digest(self) -> str:
    h = hashlib.sha256(self.weights.tobytes())
    h.update(np.float32(self.bias).tobytes())
    return h.hexdigest()[:16]

  def save(self, path: str) -> str:
    os.makedirs(path, exist_ok=True)
    np.savez(os.path.join(path, "weights.npz"), weights=self.weights,
             bias=np.float32(self.bias))
    meta = {**self.meta, "format": FORMAT, "hash_dim": HASH_DIM, "digest": self.digest}
    with open(os.path.join(path, "model.json"), "w") as f:
      json.dump(meta, f, indent=2, sort_keys=True)
    return self.digest

  @classmethod
  def load(cls, path: str) -> NliClassifier:
    meta_path = os.path.join(path, "model.json")
    if not os.path.exists(meta_path):
      raise FileNotFoundError(f"{path} is not an NLI model directory (no model.json); "
                              f"train one with `python -m pipelines.nli train --out {path}`")
    with open(meta_path) as f:
      meta = json.load(f)
    if meta.get("format") != FORMAT:
      raise ValueError(f"{path}: expected format {FORMAT!r}, found {meta.get('format')!r}")
    with np.load(os.path.join(path, "weights.npz"), allow_pickle=False) as data:
      model = cls(data["weights"], float(data["bias"]), meta)
    if model.digest != meta.get("digest"):
      raise ValueError(f"{path}: weights give digest {model.digest}, model.json records "
                       f"{meta.get('digest')}")
    return model

  def predict(self, premises: Sequence[str], hypotheses: Sequence[str]) -> np.ndarray:
    """float32 [n]: entailment probability of each pair."""
    if len(premises) != len(hypotheses):
      raise ValueError(f"{len(premises)} premises but {len(hypotheses)} hypotheses")
    if not premises:
      return np.zeros(0, np.float32)
    x = np.stack([features(p, h) for p, h in zip(premises, hypotheses)])
    return (1.0 / (1.0 + np.exp(-(x @ self.weights + self.bias)))).astype(np.float32)


def _load(nli_model: str = "") -> dict[str, Any]:
  if not nli_model:
    raise ValueError("the nli reward needs a model directory (nli_model); train one with "
                     "`python -m pipelines.nli train --out DIR`")
  return {"predict": NliClassifier.load(nli_model).predict}


@registry.register_reward("nli", task=world.TASK, fields=("document",),
                          options=("nli_model",), load=_load,
                          score_rows=world.sentence_mean)
def score(record: Mapping[str, Any], completions: Sequence[str], predict: world.Predict
          ) -> np.ndarray:
  """float32 [n]: mean P(document entails sentence) over each summary's sentences."""
  return world.score_sentence_mean(record, completions, predict)


def main(argv: Sequence[str] | None = None, prog: str = "python -m pipelines.nli") -> int:
  """``train``: fits, evaluates and saves the classifier (``python -m pipelines.nli``)."""
  from rlds_lm.cli_help import HelpFormatter  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                   formatter_class=HelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  t = sub.add_parser("train", help="train and save the classifier",
                     formatter_class=HelpFormatter)
  t.add_argument("--out", required=True, help="model directory to write")
  t.add_argument("--examples", type=int, default=2000, help="training pairs generated")
  t.add_argument("--seed", type=int, default=0, help="data and initialisation seed")
  t.add_argument("--steps", type=int, default=300, help="optimisation steps")
  args = parser.parse_args(argv)
  w, b, report = train(args.examples, args.seed, args.steps)
  digest = NliClassifier(w, b, report).save(args.out)
  print(f"NLI classifier {digest}: train accuracy {report['train_accuracy']:.3f}, held-out "
        f"accuracy {report['test_accuracy']:.3f} on {report['test_pairs']} pairs; "
        f"saved to {args.out}")
  return 0

