"""Generates the field tables and worked examples of docs/schema.md from the code.

Everything printed here is computed: the tables come from ``schema.step_specs`` /
``schema.episode_metadata_specs`` and are checked leaf by leaf against the TFDS
``schema.episode_features(cfg)``; the examples are built with the ``schema`` helpers and
the byte tokenizer, validated with ``validate.validate_episode`` and encoded with the
TFDS features before they are printed.

Usage (from the repository root)::

    python docs/gen_schema_examples.py            # print every generated block
    python docs/gen_schema_examples.py --write    # refresh the blocks in docs/schema.md
    python docs/gen_schema_examples.py --check    # exit 1 if docs/schema.md is stale

In docs/schema.md each block sits between ``<!-- BEGIN gen:NAME -->`` and
``<!-- END gen:NAME -->``; ``--write`` replaces only what lies between the markers.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from rlds_lm import read as R  # noqa: E402
from rlds_lm import schema as S  # noqa: E402
from rlds_lm import validate as V  # noqa: E402
from rlds_lm.tokenizers import ByteTokenizer  # noqa: E402

DOC_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schema.md")
TOK = ByteTokenizer()

# --------------------------------------------------------------------------------------
# Field tables.
# --------------------------------------------------------------------------------------

# Table configs: distinct K, S and channel counts so every fixed dimension can be named.
_TABLE_K, _TABLE_S, _TABLE_CH = 5, 7, 3
_REWARD_PLACEHOLDER = "REWARDNAME"  # rendered as <name>
ROLLOUT_TABLE_CFG = S.SchemaConfig(
    kind=S.ROLLOUT, vocab_size=TOK.vocab_size, teacher_top_k=_TABLE_K,
    teacher_sampled_k=_TABLE_S, reward_names=(_REWARD_PLACEHOLDER,),
    image_channels=_TABLE_CH)
PREFERENCE_TABLE_CFG = S.SchemaConfig(
    kind=S.PREFERENCE, vocab_size=TOK.vocab_size, image_channels=_TABLE_CH)

# Meaning of every leaf, by path (step paths relative to one step). A field added to the
# schema without an entry here makes this script fail, and so does a stale entry.
_META_MEANING = {
    S.EPISODE_ID: "Stable, content-derived id: `ep-` + 16 hex digits for rollouts, "
                  "`pref-` + 16 for preferences (see *Episode ids*). Unique within a "
                  "dataset; it is the TFDS example key.",
    S.PROMPT_ID: "Ties together the N samples (rollouts) or the judgements "
                 "(preferences) of one prompt.",
    S.TASK: "Task name, e.g. `\"arithmetic\"`.",
    S.INVALID: "`True`: kept for the record, must not be trained on.",
    S.LINEAGE: "A JSON object, stored as a string, saying where the episode came from "
               "(parse it with `schema.lineage_dict`; never evaluated).",
    S.SAMPLE_INDEX: "Which of the N samples of `prompt_id` this is.",
    f"{S.POLICY}/{S.POLICY_NAME}": "Name of the behaviour policy.",
    f"{S.POLICY}/{S.POLICY_DIGEST}": "Checkpoint digest of the policy (`\"\"` if unknown).",
    f"{S.SAMPLER}/{S.SAMPLER_TEMPERATURE}": "Sampling temperature (>= 0).",
    f"{S.SAMPLER}/{S.SAMPLER_TOP_K}": "Top-k truncation of the sampler, 0 = off (>= 0).",
    f"{S.SAMPLER}/{S.SAMPLER_TOP_P}": "Nucleus (top-p) truncation, 1.0 = off (in [0, 1]).",
    f"{S.SAMPLER}/{S.SAMPLER_SEED}": "Per-sample seed.",
    S.CANDIDATE_IDS: "`episode_id` of each candidate (C ids; C >= 2).",
    f"{S.JUDGE}/{S.JUDGE_NAME}": "Name of the judge (person, reward model, LLM, rule).",
    f"{S.JUDGE}/{S.JUDGE_DIGEST}": "Judge checkpoint digest (`\"\"` for humans).",
    f"{S.JUDGE}/{S.JUDGE_KIND}": "One of " + ", ".join(f"`{k}`" for k in S.JUDGE_KINDS)
                                 + " (checked by the validator).",
}

_STEP_MEANING = {
    S.REWARD: "Primary scalar reward of this step's action (0.0 on the last step).",
    S.DISCOUNT: "In [0, 1]. 0.0 on the step whose action ended a terminated episode, "
                "1.0 elsewhere (and on the last step, as a placeholder).",
    S.IS_FIRST: "True on step 0 only.",
    S.IS_LAST: "True on the last step only; that step carries the final observation "
               "and no valid action.",
    S.IS_TERMINAL: "True only on the last step of an episode that terminated (False "
                   "when it was cut short / truncated).",
    f"{S.OBSERVATION}/{S.OBS_TOKENS}": "Token ids of the turn shown to the agent; each "
                                       "id in `[0, vocab_size)`.",
    f"{S.OBSERVATION}/{S.OBS_TEXT}": "The same turn as text (for humans and "
                                     "re-tokenisation).",
    f"{S.OBSERVATION}/{S.OBS_ROLE}": "Who produced the turn: one of "
                                     + ", ".join(f"`{r}`" for r in S.ROLES) + ".",
    f"{S.OBSERVATION}/{S.OBS_IMAGE}": "Observation image; a 1x1 all-zero placeholder "
                                      "when the turn has none.",
    f"{S.OBSERVATION}/{S.OBS_HAS_IMAGE}": "False when `image` is the placeholder.",
    f"{S.OBSERVATION}/{S.OBS_CANDIDATE_TOKENS}": "The candidates' tokens, concatenated "
                                                 "in candidate order.",
    f"{S.OBSERVATION}/{S.OBS_CANDIDATE_LENGTHS}": "Token count of each candidate; sums "
                                                  "to the length of `candidate_tokens`.",
    f"{S.ACTION}/{S.ACT_TOKENS}": "Token ids generated by the policy in this turn; "
                                  "empty (T = 0) on the last step.",
    f"{S.ACTION}/{S.ACT_TEXT}": "The generated turn as text.",
    f"{S.ACTION}/{S.ACT_THINKING_MASK}": "True for thinking (reasoning) tokens, False "
                                         "for answer / tool-call tokens.",
    f"{S.ACTION}/{S.ACT_CHOICE}": "Index of the preferred candidate; -1 for a tie "
                                  "(and on the last step).",
    f"{S.ACTION}/{S.ACT_RANKING}": "Candidate indices, best first: a permutation of "
                                   "0..C-1.",
    f"{S.ACTION}/{S.ACT_SCORES}": "Judge score of each candidate (finite).",
    S.ACTION_LOGPROBS: "Behaviour-policy log p(token) of each action token (<= 0).",
    S.TOKEN_REWARDS: "Per-token rewards (zeros if none).",
    f"{S.REWARDS}/<name>": "Named scalar reward of this turn, one per "
                           "`SchemaConfig.reward_names` entry.",
    f"{S.TEACHER}/{S.TEACHER_TOKEN_LOGPROB}": "Teacher log p(sampled token): the "
                                              "teacher's log-prob of `action/tokens[t]`.",
    f"{S.TEACHER}/{S.TEACHER_TOPK_IDS}": "Teacher's K most likely ids per token, most "
                                         "likely first.",
    f"{S.TEACHER}/{S.TEACHER_TOPK_LOGPROBS}": "Their log-probs, normalised over the full "
                                              "vocabulary: tail mass = 1 - sum(exp(row)).",
    f"{S.TEACHER}/{S.TEACHER_SAMPLED_IDS}": "Distinct ids among S draws from the teacher "
                                            "(Gemma-3-style sampled-k); unused slots id 0.",
    f"{S.TEACHER}/{S.TEACHER_SAMPLED_COUNTS}": "Draws per id (unused slots 0); each row "
                                               "sums to S.",
}

_PRESENT_WHEN = {
    f"{S.OBSERVATION}/{S.OBS_IMAGE}": "`image_channels > 0`",
    f"{S.OBSERVATION}/{S.OBS_HAS_IMAGE}": "`image_channels > 0`",
    f"{S.REWARDS}/<name>": "per reward name",
    f"{S.TEACHER}/{S.TEACHER_TOKEN_LOGPROB}": "`K > 0` or `S > 0`",
    f"{S.TEACHER}/{S.TEACHER_TOPK_IDS}": "`K > 0`",
    f"{S.TEACHER}/{S.TEACHER_TOPK_LOGPROBS}": "`K > 0`",
    f"{S.TEACHER}/{S.TEACHER_SAMPLED_IDS}": "`S > 0`",
    f"{S.TEACHER}/{S.TEACHER_SAMPLED_COUNTS}": "`S > 0`",
}


def _display_path(path: str) -> str:
  return path.replace(_REWARD_PLACEHOLDER, "<name>")


def _shape_text(path: str, shape: tuple[Any, ...]) -> str:
  if not shape:
    return "`[]`"
  dims = []
  for axis, dim in enumerate(shape):
    if isinstance(dim, str):
      dims.append(dim)
    elif dim is None:
      if path.endswith(S.OBS_IMAGE):
        dims.append("H" if axis == 0 else "W")
      elif path.endswith(S.OBS_CANDIDATE_TOKENS):
        dims.append("N")
      elif path == S.CANDIDATE_IDS:
        dims.append("C")
      else:
        raise AssertionError(f"{path}: unnamed free dimension {axis}")
    else:
      if S.TEACHER_TOPK_IDS in path or S.TEACHER_TOPK_LOGPROBS in path:
        assert dim == _TABLE_K, path
        dims.append("K")
      elif S.TEACHER_SAMPLED_IDS in path or S.TEACHER_SAMPLED_COUNTS in path:
        assert dim == _TABLE_S, path
        dims.append("S")
      elif path.endswith(S.OBS_IMAGE):
        assert dim == _TABLE_CH, path
        dims.append("ch")
      else:
        raise AssertionError(f"{path}: unexpected fixed dimension {dim}")
  return "`[" + ", ".join(dims) + "]`"


def _feature_leaves(features, prefix: str = ""):
  """Yields ``(path, feature)`` for every leaf of a TFDS FeaturesDict."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  for key in features.keys():
    feature = features[key]
    path = f"{prefix}{key}"
    if isinstance(feature, tfds.features.FeaturesDict):
      yield from _feature_leaves(feature, path + "/")
    else:
      yield path, feature


def _storage_text(feature) -> str:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  if isinstance(feature, tfds.features.Text):
    return "`Text`"
  if isinstance(feature, tfds.features.Image):
    return f"`Image` ({feature.encoding_format})"
  if isinstance(feature, tfds.features.Scalar):
    return "`Scalar`"
  if isinstance(feature, tfds.features.Tensor):
    encoding = feature.to_json_content().encoding
    return f"`Tensor`, encoding={encoding}"
  return f"`{type(feature).__name__}`"


def _check_feature(path: str, spec: S.FieldSpec, feature) -> None:
  """Asserts that a TFDS leaf feature stores what the FieldSpec says."""
  if spec.is_string:
    assert feature.np_dtype == np.object_, (path, feature.np_dtype)
  else:
    assert np.dtype(feature.np_dtype) == np.dtype(spec.dtype), (path, feature.np_dtype)
  want = tuple(d if isinstance(d, int) else None for d in spec.shape)
  assert tuple(feature.shape) == want, (path, feature.shape, want)


def _leaf_storage(config: S.SchemaConfig) -> dict[str, str]:
  """Storage text of every leaf (metadata paths, then ``steps/...``).

  Walks ``episode_features(config)`` and asserts that it has exactly the leaves of the
  specs, each with the spec's dtype and shape.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  meta = dict(S.iter_specs(S.episode_metadata_specs(config)))
  step = {f"{S.STEPS}/{p}": s for p, s in S.iter_specs(S.step_specs(config))}
  specs = {**meta, **step}
  found: dict[str, Any] = {}
  for path, feature in _feature_leaves(S.episode_features(config)):
    if path == S.STEPS:
      assert isinstance(feature, tfds.features.Dataset), feature
      for sub, leaf in _feature_leaves(feature.feature, S.STEPS + "/"):
        found[sub] = leaf
    else:
      found[path] = feature
  assert set(found) == set(specs), sorted(set(found) ^ set(specs))
  for path, spec in specs.items():
    _check_feature(path, spec, found[path])
  return {path: _storage_text(found[path]) for path in specs}


def _table(rows: list[tuple[str, S.FieldSpec]], storage: Mapping[str, str],
           meanings: Mapping[str, str], storage_prefix: str, used: set[str],
           with_present: bool) -> list[str]:
  header = "| Field | dtype | shape | TFDS feature |" + (" present |" if with_present else "")
  header += " meaning |"
  lines = [header, "|" + "---|" * header.count(" |")]
  for path, spec in rows:
    shown = _display_path(path)
    if shown not in meanings:
      raise AssertionError(f"no meaning written for field {shown!r}: add it to this script")
    used.add(shown)
    dtype = "string" if spec.is_string else spec.dtype
    cells = [f"`{shown}`", f"`{dtype}`", _shape_text(path, spec.shape),
             storage[storage_prefix + path]]
    if with_present:
      cells.append(_PRESENT_WHEN.get(shown, "always"))
    cells.append(meanings[shown])
    lines.append("| " + " | ".join(cells) + " |")
  return lines


def _group(step_rows: list[tuple[str, S.FieldSpec]]) -> dict[str, list]:
  groups: dict[str, list] = {"core": [], "observation": [], "action": [],
                             "metadata": [], "teacher": []}
  core = {S.REWARD, S.DISCOUNT, S.IS_FIRST, S.IS_LAST, S.IS_TERMINAL}
  for path, spec in step_rows:
    head = path.split("/", 1)[0]
    if head in core:
      groups["core"].append((path, spec))
    elif head == S.OBSERVATION:
      groups["observation"].append((path, spec))
    elif head == S.ACTION:
      groups["action"].append((path, spec))
    elif head == S.TEACHER:
      groups["teacher"].append((path, spec))
    else:
      groups["metadata"].append((path, spec))
  return groups


def tables_block(config: S.SchemaConfig, used: set[str]) -> str:
  storage = _leaf_storage(config)
  meta_rows = list(S.iter_specs(S.episode_metadata_specs(config)))
  step_rows = list(S.iter_specs(S.step_specs(config)))
  groups = _group(step_rows)
  present = True
  out: list[str] = []
  titles = [
      ("Episode metadata (top level of the episode)", meta_rows, ""),
      ("Step: RLDS core fields (paths relative to `steps[i]`)", groups["core"], "steps/"),
      ("Step: observation", groups["observation"], "steps/"),
      ("Step: action", groups["action"], "steps/"),
  ]
  if config.kind == S.ROLLOUT:
    titles += [("Step metadata", groups["metadata"], "steps/"),
               ("Step metadata: teacher (`steps[i]/teacher/...`)", groups["teacher"],
                "steps/")]
  else:
    assert not groups["metadata"] and not groups["teacher"], groups
  meanings = {**_META_MEANING, **_STEP_MEANING}
  if config.kind == S.PREFERENCE:
    meanings = {**meanings,
                S.EPISODE_ID: "Stable, content-derived id `pref-` + 16 hex digits (see "
                              "*Episode ids*); the TFDS example key.",
                S.REWARD: "Reward of the judgement (0.0 unless the producer sets one; "
                          "0.0 on the last step).",
                f"{S.OBSERVATION}/{S.OBS_TOKENS}": "Token ids of the prompt the "
                                                   "candidates answer (empty on the "
                                                   "last step).",
                f"{S.OBSERVATION}/{S.OBS_TEXT}": "The prompt as text."}
  for title, rows, prefix in titles:
    out += [f"**{title}**", ""]
    out += _table(rows, storage, meanings, prefix, used, present)
    out.append("")
  return "\n".join(out).rstrip() + "\n"


# --------------------------------------------------------------------------------------
# Compact, JSON-ish printing.
# --------------------------------------------------------------------------------------


def _num(x: Any) -> str:
  if isinstance(x, (bool, np.bool_)):
    return "true" if x else "false"
  if isinstance(x, (float, np.floating)):
    r = round(float(x), 4)
    return "0.0" if r == 0 else repr(r)
  if isinstance(x, str):
    return json.dumps(x, ensure_ascii=False)
  return str(x)


def _nested(values: Any) -> str:
  if isinstance(values, list):
    return "[" + ", ".join(_nested(v) for v in values) + "]"
  return _num(values)


def fmt_value(value: Any) -> str:
  if isinstance(value, np.ndarray):
    dtype = "string" if value.dtype == object else str(value.dtype)
    shape = "(" + ", ".join(str(d) for d in value.shape) + ("," if value.ndim == 1 else "") + ")"
    return f"<{dtype} {shape}> {_nested(value.tolist())}"
  return _num(value)


def _inline(tree: Mapping[str, Any]) -> str:
  parts = []
  for key, value in tree.items():
    text = _inline(value) if isinstance(value, Mapping) else fmt_value(value)
    parts.append(f"{key}: {text}")
  return "{" + ", ".join(parts) + "}"


def fmt_tree(tree: Mapping[str, Any], indent: str = "", width: int = 100) -> list[str]:
  lines = []
  for key, value in tree.items():
    if key == S.STEPS:
      for i, step in enumerate(value):
        lines.append(f"{indent}{S.STEPS}[{i}]:")
        lines += fmt_tree(step, indent + "  ", width)
      continue
    if isinstance(value, Mapping):
      inline = _inline(value)
      if len(indent) + len(key) + 2 + len(inline) <= width:
        lines.append(f"{indent}{key}: {inline}")
      else:
        lines.append(f"{indent}{key}:")
        lines += fmt_tree(value, indent + "  ", width)
    else:
      lines.append(f"{indent}{key}: {fmt_value(value)}")
  return lines


# --------------------------------------------------------------------------------------
# Example episodes.
# --------------------------------------------------------------------------------------

EXAMPLE_K, EXAMPLE_S = 2, 4
ROLLOUT_CFG = S.SchemaConfig(kind=S.ROLLOUT, vocab_size=TOK.vocab_size, tokenizer=TOK.name,
                             teacher_top_k=EXAMPLE_K, teacher_sampled_k=EXAMPLE_S,
                             reward_names=("correct", "rm"))
AGENT_CFG = S.SchemaConfig(kind=S.ROLLOUT, vocab_size=TOK.vocab_size, tokenizer=TOK.name,
                           reward_names=("correct",), image_channels=3)
PREFERENCE_CFG = S.SchemaConfig(kind=S.PREFERENCE, vocab_size=TOK.vocab_size,
                                tokenizer=TOK.name)
POLICY_DIGEST = S.content_id("demo policy weights")  # 16 hex digits


def demo_teacher(config: S.SchemaConfig, tokens: np.ndarray,
                 peaks: list[dict[int, float]], seed: int) -> dict[str, np.ndarray]:
  """Teacher arrays from a known full-vocabulary distribution per token.

  Position ``t`` puts probability ``peaks[t][id]`` on a few ids and spreads the rest
  uniformly over the other ids, so the true tail mass is known exactly.
  """
  v = config.vocab_size
  probs = np.zeros((len(tokens), v))
  for t, peak in enumerate(peaks):
    rest = 1.0 - sum(peak.values())
    probs[t, :] = rest / (v - len(peak))
    for token_id, p in peak.items():
      probs[t, token_id] = p
  logprobs = np.log(probs)
  teacher = {S.TEACHER_TOKEN_LOGPROB:
             logprobs[np.arange(len(tokens)), tokens].astype(np.float32)}
  order = np.argsort(-logprobs, axis=-1, kind="stable")[:, :config.teacher_top_k]
  teacher[S.TEACHER_TOPK_IDS] = order.astype(np.int32)
  teacher[S.TEACHER_TOPK_LOGPROBS] = np.take_along_axis(logprobs, order, -1).astype(
      np.float32)
  rng = np.random.default_rng(seed)
  s = config.teacher_sampled_k
  ids = np.zeros((len(tokens), s), np.int32)
  counts = np.zeros((len(tokens), s), np.int32)
  for t in range(len(tokens)):
    draws = rng.choice(v, size=s, p=probs[t])
    uniq, cnt = np.unique(draws, return_counts=True)
    order_by_count = np.argsort(-cnt, kind="stable")
    ids[t, :len(uniq)] = uniq[order_by_count]
    counts[t, :len(uniq)] = cnt[order_by_count]
  teacher[S.TEACHER_SAMPLED_IDS] = ids
  teacher[S.TEACHER_SAMPLED_COUNTS] = counts
  return teacher


def _tok(text: str) -> int:
  (token_id,) = TOK.encode(text).tolist()
  return token_id


def single_turn_rollout(answer: str = "5", sample_index: int = 0) -> dict[str, Any]:
  """"2+3=" -> answer + EOS, with behaviour log-probs, teacher and two rewards."""
  cfg = ROLLOUT_CFG
  prompt = TOK.encode("2+3=")
  action = TOK.encode(answer, add_eos=True)  # e.g. [56, 2]: "5", <eos>
  teacher = demo_teacher(cfg, action, [{_tok("5"): 0.6, _tok("6"): 0.25},
                                       {TOK.eos_id: 0.7, _tok("\n"): 0.2}],
                         seed=sample_index)
  correct = float(answer == "5")
  turn = S.Turn(
      observation=S.observation(cfg, prompt, "2+3=", "prompt"),
      action_tokens=action,
      action_text=answer,
      action_logprobs=np.log(np.asarray([0.75, 0.875], np.float32)),
      reward=correct,
      rewards={"correct": correct, "rm": 0.5 + 0.25 * correct},
      token_rewards=np.asarray([-0.125, -0.125], np.float32),  # a per-token length cost
      teacher=teacher,
  )
  return S.rollout_episode(
      cfg, [turn], prompt_id=S.content_id("arithmetic", "2+3=", prefix="q-"),
      task="arithmetic", sample_index=sample_index, policy_name="bigram",
      policy_digest=POLICY_DIGEST, temperature=1.0, top_k=0, top_p=0.875,
      seed=1000 + sample_index, lineage={"pipeline": "generate", "teacher": "demo-teacher"})


def agentic_rollout() -> dict[str, Any]:
  """User shows an image, the model thinks and calls a tool, the tool answers, done."""
  cfg = AGENT_CFG
  image = np.asarray([[[255, 0, 0], [0, 255, 0]],
                      [[0, 0, 255], [255, 255, 255]]], np.uint8)  # a 2x2 RGB picture
  thinking, call = "hm\n", "add(2,3)"
  action0 = TOK.encode(thinking + call)
  mask0 = np.asarray([True] * len(thinking) + [False] * len(call))
  action1 = TOK.encode("5", add_eos=True)
  turns = [
      S.Turn(observation=S.observation(cfg, TOK.encode("sum?"), "sum?", "user", image=image),
             action_tokens=action0, action_text=thinking + call,
             action_logprobs=np.full(len(action0), -0.25, np.float32),
             thinking_mask=mask0, reward=0.0, rewards={"correct": 0.0}),
      S.Turn(observation=S.observation(cfg, TOK.encode("5"), "5", "tool"),
             action_tokens=action1, action_text="5",
             action_logprobs=np.asarray([-0.5, -0.125], np.float32),
             reward=1.0, rewards={"correct": 1.0}),
  ]
  final = S.observation(cfg, TOK.encode("ok"), "ok", "user")
  return S.rollout_episode(cfg, turns, final, prompt_id="chat-0", task="tool_use",
                           policy_name="bigram", policy_digest=POLICY_DIGEST, seed=7,
                           lineage={"source": "LmEnv"})


def preference(candidates: list[dict[str, Any]]) -> dict[str, Any]:
  """An exact-match rule judges two rollouts of "2+3="."""
  cfg = PREFERENCE_CFG
  return S.preference_episode(
      cfg, S.observation(cfg, TOK.encode("2+3="), "2+3=", "prompt"),
      [c[S.EPISODE_ID] for c in candidates],
      [c[S.STEPS][0][S.ACTION][S.ACT_TOKENS] for c in candidates],
      prompt_id=candidates[0][S.PROMPT_ID], choice=0,
      scores=np.asarray([1.0, 0.0], np.float32), judge_name="exact_match",
      judge_kind="rule", task="arithmetic")


def _validated_and_encoded(episode: Mapping[str, Any], config: S.SchemaConfig) -> dict:
  normalised = V.validate_episode(episode, config)
  S.episode_features(config).encode_example(copy.deepcopy(normalised))
  return normalised


def example_block(episode: Mapping[str, Any], config: S.SchemaConfig) -> str:
  normalised = _validated_and_encoded(episode, config)
  lines = [f"# SchemaConfig: {config.to_json()}"]
  lines += fmt_tree(normalised)
  return "```yaml\n" + "\n".join(lines) + "\n```\n"


# --------------------------------------------------------------------------------------
# Validation errors, ids, token view.
# --------------------------------------------------------------------------------------


def _error_of(mutate: Callable[[dict], None], episode: Mapping[str, Any],
              config: S.SchemaConfig) -> str:
  bad = copy.deepcopy(dict(episode))
  mutate(bad)
  try:
    V.validate_episode(bad, config)
  except V.EpisodeValidationError as e:
    return f"{type(e).__name__}: {e}"
  raise AssertionError("the mutated episode validated")


def validation_block(rollout: Mapping[str, Any], pref: Mapping[str, Any]) -> str:
  cases = [
      ("behaviour log-probs one token short",
       lambda ep: ep[S.STEPS][0].__setitem__(S.ACTION_LOGPROBS,
                                             ep[S.STEPS][0][S.ACTION_LOGPROBS][:1]),
       rollout, ROLLOUT_CFG),
      ("a sampled-k row whose counts do not sum to S",
       lambda ep: ep[S.STEPS][0][S.TEACHER][S.TEACHER_SAMPLED_COUNTS].__setitem__(
           (0, 0), 3), rollout, ROLLOUT_CFG),
      ("a token id outside the vocabulary",
       lambda ep: ep[S.STEPS][0][S.ACTION].__setitem__(
           S.ACT_TOKENS, np.asarray([56, 300], np.int32)), rollout, ROLLOUT_CFG),
      ("a reward on the last step (it has no action)",
       lambda ep: ep[S.STEPS][1].__setitem__(S.REWARD, 1.0), rollout, ROLLOUT_CFG),
      ("a terminated episode whose last action has discount 1",
       lambda ep: ep[S.STEPS][0].__setitem__(S.DISCOUNT, 1.0), rollout, ROLLOUT_CFG),
      ("a ranking that is not a permutation",
       lambda ep: ep[S.STEPS][0][S.ACTION].__setitem__(
           S.ACT_RANKING, np.asarray([0, 0], np.int32)), pref, PREFERENCE_CFG),
  ]
  lines = []
  for title, mutate, episode, config in cases:
    lines.append(f"# {title}")
    lines.append(_error_of(mutate, episode, config))
  return "```text\n" + "\n".join(lines) + "\n```\n"


def teacher_block(episode: Mapping[str, Any]) -> str:
  """What a reader derives from the stored teacher arrays of step 0."""
  teacher = episode[S.STEPS][0][S.TEACHER]
  topk = np.exp(teacher[S.TEACHER_TOPK_LOGPROBS].astype(np.float64))
  tail = 1.0 - topk.sum(axis=-1)
  lines = ["# tail mass per token = 1 - sum(exp(topk_logprobs))",
           f"tail_mass: {_nested([float(x) for x in tail])}",
           "# sampled-k estimate per token: q(id) = count / S (zero-count slots dropped)"]
  s = teacher[S.TEACHER_SAMPLED_COUNTS].shape[1]
  for t, (ids, counts) in enumerate(zip(teacher[S.TEACHER_SAMPLED_IDS],
                                        teacher[S.TEACHER_SAMPLED_COUNTS])):
    q = {int(i): float(c) / s for i, c in zip(ids, counts) if c}
    lines.append(f"token {t}: " + "{" + ", ".join(f"{i}: {_num(p)}" for i, p in q.items())
                 + "}")
  return "```text\n" + "\n".join(lines) + "\n```\n"


def log_steps_block(episode: Mapping[str, Any], config: S.SchemaConfig) -> str:
  """The envlogger / dm_env records an episode becomes in a Riegeli log."""
  from rlds_lm import logs  # pylint: disable=g-import-not-at-top

  normalised = V.validate_episode(episode, config)
  header = ["log step", "step_type", "observation (text)", "reward", "discount",
            "action (text)", "custom_data keys"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for j, (timestep, action, custom) in enumerate(logs.episode_to_log_steps(normalised)):
    obs_text = timestep.observation[S.OBS_TEXT]
    cells = [str(j), f"`{timestep.step_type.name}`", f"`{json.dumps(obs_text)}`",
             "-" if timestep.reward is None else _num(float(timestep.reward)),
             "-" if timestep.discount is None else _num(float(timestep.discount)),
             "-" if action is None else f"`{json.dumps(action[S.ACT_TEXT])}`",
             "-" if not custom else ", ".join(f"`{k}`" for k in custom)]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def ids_block(ep: Mapping[str, Any], other: Mapping[str, Any],
              pref: Mapping[str, Any]) -> str:
  rescored = copy.deepcopy(dict(ep))
  rescored[S.STEPS][0][S.REWARDS]["rm"] = 0.0
  lines = [
      f'single-turn rollout ("5", sample 0):   {ep[S.EPISODE_ID]}',
      f'same prompt, sample 1 answers "6":     {other[S.EPISODE_ID]}',
      f"recomputed from the validated copy:    "
      f"{S.rollout_episode_id(V.validate_episode(ep, ROLLOUT_CFG))}",
      f"after re-scoring (rewards changed):    {S.rollout_episode_id(rescored)}",
      f"preference over the two:               {pref[S.EPISODE_ID]}",
      f'content_id("arithmetic", "2+3=", prefix="q-") = '
      f'{S.content_id("arithmetic", "2+3=", prefix="q-")}',
  ]
  return "```text\n" + "\n".join(lines) + "\n```\n"


def token_view_block(episode: Mapping[str, Any], config: S.SchemaConfig,
                     with_teacher: bool) -> str:
  steps = R.token_view(V.validate_episode(episode, config))
  header = ["j", "position", "prev_token", "turn", "action", "reward", "discount",
            "is_first", "is_last", "is_terminal", "action_logprob", "thinking"]
  if with_teacher:
    header += ["teacher/topk_ids", "teacher/token_logprob"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for j, step in enumerate(steps):
    obs = step[S.OBSERVATION]
    cells = [j, obs[R.TOKEN_POSITION], obs[R.TOKEN_PREV], obs[R.TOKEN_TURN],
             step[S.ACTION], step[S.REWARD], step[S.DISCOUNT], step[S.IS_FIRST],
             step[S.IS_LAST], step[S.IS_TERMINAL], step["action_logprob"], step["thinking"]]
    if with_teacher:
      cells += [step[S.TEACHER][S.TEACHER_TOPK_IDS].tolist(),
                step[S.TEACHER][S.TEACHER_TOKEN_LOGPROB]]
    lines.append("| " + " | ".join(_nested(c) if isinstance(c, list) else _num(c)
                                   for c in cells) + " |")
  return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------
# Main.
# --------------------------------------------------------------------------------------


def blocks() -> dict[str, str]:
  used: set[str] = set()
  out = {
      "rollout-tables": tables_block(ROLLOUT_TABLE_CFG, used),
      "preference-tables": tables_block(PREFERENCE_TABLE_CFG, used),
  }
  stale = set(_META_MEANING) | set(_STEP_MEANING)
  stale -= used
  if stale:
    raise AssertionError(f"meanings for fields the schema no longer has: {sorted(stale)}")
  rollout = single_turn_rollout("5", 0)
  other = single_turn_rollout("6", 1)
  agent = agentic_rollout()
  pref = preference([rollout, other])
  out["example-rollout"] = example_block(rollout, ROLLOUT_CFG)
  out["example-agentic"] = example_block(agent, AGENT_CFG)
  out["example-preference"] = example_block(pref, PREFERENCE_CFG)
  out["log-steps"] = log_steps_block(agent, AGENT_CFG)
  out["teacher-derived"] = teacher_block(rollout)
  out["validation-errors"] = validation_block(rollout, pref)
  out["episode-ids"] = ids_block(rollout, other, pref)
  out["token-view-rollout"] = token_view_block(rollout, ROLLOUT_CFG, with_teacher=True)
  out["token-view-agentic"] = token_view_block(agent, AGENT_CFG, with_teacher=False)
  return out


_BLOCK = re.compile(r"(<!-- BEGIN gen:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- END gen:(?P=name) -->)",
                    re.DOTALL)


def render_doc(text: str, generated: Mapping[str, str]) -> str:
  seen = set()

  def replace(match: re.Match) -> str:
    name = match.group("name")
    if name not in generated:
      raise KeyError(f"docs/schema.md names an unknown block gen:{name}")
    seen.add(name)
    return match.group(1) + generated[name] + match.group(4)

  out = _BLOCK.sub(replace, text)
  missing = set(generated) - seen
  if missing:
    raise KeyError(f"docs/schema.md lacks blocks: {sorted(missing)}")
  return out


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  mode = parser.add_mutually_exclusive_group()
  mode.add_argument("--write", action="store_true", help="refresh docs/schema.md")
  mode.add_argument("--check", action="store_true", help="fail if docs/schema.md is stale")
  parser.add_argument("--doc", default=DOC_PATH)
  args = parser.parse_args(argv)
  generated = blocks()
  if not (args.write or args.check):
    for name, body in generated.items():
      print(f"<!-- BEGIN gen:{name} -->\n{body}<!-- END gen:{name} -->\n")
    return 0
  with open(args.doc, encoding="utf-8") as f:
    text = f.read()
  new = render_doc(text, generated)
  if args.check:
    if new != text:
      print(f"{args.doc} is stale: run python docs/gen_schema_examples.py --write",
            file=sys.stderr)
      return 1
    return 0
  if new != text:
    with open(args.doc, "w", encoding="utf-8") as f:
      f.write(new)
  return 0


if __name__ == "__main__":
  sys.exit(main())
