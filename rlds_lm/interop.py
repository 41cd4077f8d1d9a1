"""Published datasets to and from the Hugging Face world: TRL-style JSONL and ``datasets``.

Row formats, the ones TRL's trainers read (docs/interop.md has the full table):

* ``prompt_completion`` (rollout datasets): ``prompt``, ``completion``: strings, or TRL's
  conversational form (lists of ``{"role", "content"}`` messages, the last model turn as
  the completion) for multi-turn episodes and for episodes imported from conversational
  rows;
* ``messages`` (rollout datasets): TRL's conversational language-modelling rows, the
  whole conversation in ``messages``;
* ``preference`` (preference datasets): ``prompt``, ``chosen``, ``rejected``, one row per
  (preferred, other) candidate pair of a judgement; ties give no row. The import also
  takes conversational rows and TRL's implicit-prompt rows (no ``prompt`` column: the
  common start of ``chosen`` and ``rejected`` is the prompt), and the export gives such
  rows back for the episodes imported from them;
* ``unpaired_preference`` (rollout datasets): TRL's unpaired preference (KTO) rows,
  ``prompt``, ``completion``, ``label`` (a bool, stored as the named reward ``label``);
* ``distill`` (rollout datasets with teacher top-k, single-turn): ``prompt_completion``
  plus ``teacher_topk_ids`` / ``teacher_topk_logprobs`` [completion tokens][k] and
  ``teacher_token_logprobs`` [completion tokens], for offline distillation (GKD-style
  trainers with a stored teacher). Sampled-k teacher draws are not exported.

Every row also carries what the episode knew: ``prompt_id``, ``episode_id``, the token
ids (``prompt_token_ids``, ``completion_token_ids``, candidate ids), rewards, the policy
and sampler; the import uses them, so a single-turn rollout or a two-candidate judgement
exported and imported back is the same episode (same id, tokens, log-probs, rewards,
teacher top-k) with lineage naming the file it came from. How a conversational row was
split into messages (roles, boundaries) is kept in the episode's lineage, so the export
gives the same messages back. Rows made elsewhere need only the text columns: they are
tokenised with the byte tokenizer (or ``tokenizer=``) and given content-derived ids.

Every refusal of the import is an :class:`InteropError`; one about a row is a
:class:`RowError` whose message starts with ``FILE:LINE`` (JSONL) or ``DIR row I``
(a ``datasets`` directory).

Writers: :func:`export_jsonl` (one JSON object per line) and :func:`export_hf`
(``datasets.Dataset.save_to_disk``, Arrow). Readers: :func:`import_rows` from either
(:func:`read_rows`), publishing a TFDS dataset.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from rlds_lm import schema as S
from rlds_lm import tokenizers

PROMPT_COMPLETION, PREFERENCE, DISTILL = "prompt_completion", "preference", "distill"
MESSAGES, UNPAIRED_PREFERENCE = "messages", "unpaired_preference"
FORMATS = (PROMPT_COMPLETION, MESSAGES, PREFERENCE, UNPAIRED_PREFERENCE, DISTILL)
LABEL_REWARD = "label"  # the named reward that holds an unpaired-preference row's label
_ASSISTANT = "assistant"
# Message roles the import takes (TRL's chat roles; "prompt" is a plain-string prompt).
_MESSAGE_ROLES = ("system", "user", "tool", _ASSISTANT)
_INT32 = (-2**31, 2**31 - 1)
_INT64 = (-2**63, 2**63 - 1)
# Lineage keys the import writes and the export reads back.
_CONVERSATIONAL = "conversational"  # the row was in TRL's conversational form
_TURN_MESSAGES = "turn_messages"  # per turn: [[role, characters], ...] of its observation
_IMPLICIT_PROMPT = "implicit_prompt"  # a preference row without a prompt column


class InteropError(ValueError):
  """A dataset or a row that the requested format cannot represent."""


class RowError(InteropError):
  """A row that cannot be imported. The message starts with where the row is:
  ``FILE:LINE`` for JSONL, ``DIR row I`` for a ``datasets`` directory (``where``)."""

  def __init__(self, where: str, message: str):
    self.where = where
    super().__init__(f"{where}: {message}")


# --------------------------------------------------------------------------------------
# Export.
# --------------------------------------------------------------------------------------


def _text(tokenizer, text: str, tokens) -> str:
  return text if text else tokenizer.decode(tokens)


def _role(role: str) -> str:
  return "user" if role in ("prompt", "user", "environment") else role


def export_rows(path: str | os.PathLike[str], fmt: str, split: str = "train", *,
                tokenizer_model: str | None = None,
                where: Callable[[Mapping[str, Any]], bool] | None = None
                ) -> list[dict[str, Any]]:
  """The rows of a published dataset (or a Riegeli log) in ``fmt``.

  ``tokenizer_model``: the SentencePiece model file of a ``spm:`` dataset, to decode
  token ids into the text columns. ``where``: only the episodes it accepts (e.g. an
  ``inspect_data.Filter``, as ``rlds-lm export --min_reward ...`` passes).

  Raises:
    InteropError: the dataset's kind or contents do not fit ``fmt`` (a preference format
      of rollouts, teacher columns without teacher data, multi-turn distillation), or
      its tokenizer cannot be loaded to write the text columns.
  """
  from rlds_lm import inspect_data  # pylint: disable=g-import-not-at-top
  if fmt not in FORMATS:
    raise InteropError(f"format must be one of {FORMATS}, found {fmt!r}")
  config, _, episodes, _ = inspect_data.load_episodes(path, split)
  episodes = (e for e in episodes if where is None or where(e))
  want = S.PREFERENCE if fmt == PREFERENCE else S.ROLLOUT
  if config.kind != want:
    raise InteropError(f"{path} holds {config.kind} episodes; format {fmt!r} needs "
                       f"{want} episodes")
  if fmt == DISTILL and not config.teacher_top_k:
    raise InteropError(f"{path} stores no teacher top-k (teacher_top_k=0): format "
                       f"'distill' has nothing to export; use 'prompt_completion'")
  try:
    tokenizer = tokenizers.tokenizer_from_name(config.tokenizer, tokenizer_model)
  except ValueError as e:
    raise InteropError(f"{path}: the text columns need the dataset's tokenizer "
                       f"{config.tokenizer!r}: {e} (pass its model file)") from e
  episodes = list(episodes)
  lineages = [_lineage(e) for e in episodes]
  # One form per dataset (TRL and Arrow want one type per column): conversational when
  # any episode is multi-turn or came from a conversational row.
  conversational = fmt == MESSAGES or any(l.get(_CONVERSATIONAL) for l in lineages)
  if fmt == PREFERENCE:
    implicit = bool(lineages) and all(l.get(_IMPLICIT_PROMPT) for l in lineages)
    return [{**row, "tokenizer": config.tokenizer, "vocab_size": config.vocab_size}
            for e, l in zip(episodes, lineages)
            for row in _preference_rows(e, l, tokenizer, conversational, implicit)]
  multi_turn = any(len(e[S.STEPS]) > 2 for e in episodes)
  if fmt == DISTILL and multi_turn:
    raise InteropError(f"{path} has multi-turn episodes; format 'distill' holds one "
                       f"completion per row")
  return [_rollout_row(e, l, config, tokenizer, fmt, conversational or multi_turn,
                       multi_turn) for e, l in zip(episodes, lineages)]


def _lineage(episode: Mapping[str, Any]) -> dict[str, Any]:
  try:
    lineage = S.lineage_dict(episode)
  except ValueError:
    return {}
  return lineage if isinstance(lineage, dict) else {}


def _split_messages(text: str, role: str, layout: Any) -> list[dict[str, str]]:
  """An observation's messages: as the import recorded them (``layout``: [[role,
  characters], ...]) when they still fit the text, else one message."""
  if isinstance(layout, list) and all(
      isinstance(m, list) and len(m) == 2 and isinstance(m[0], str)
      and isinstance(m[1], int) and m[1] >= 0 for m in layout):
    if not layout:
      return [] if not text else [{"role": _role(role), "content": text}]
    out, at = [], 0
    for i, (message_role, length) in enumerate(layout):
      out.append({"role": message_role, "content": text[at:at + length]})
      at += length
      if i < len(layout) - 1:
        if text[at:at + 1] != "\n":
          break
        at += 1
    else:
      if at == len(text):
        return out
  return [{"role": _role(role), "content": text}]


def _rollout_row(episode, lineage: Mapping[str, Any], config: S.SchemaConfig, tokenizer,
                 fmt: str, conversational: bool, multi_turn: bool) -> dict[str, Any]:
  turns = [s for s in episode[S.STEPS] if not s[S.IS_LAST]]
  if not turns:
    raise InteropError(f"episode {episode[S.EPISODE_ID]} has no model turn")
  layouts = lineage.get(_TURN_MESSAGES)
  if not isinstance(layouts, list) or len(layouts) != len(turns):
    layouts = [None] * len(turns)
  messages = []
  for step, layout in zip(turns, layouts):
    obs, act = step[S.OBSERVATION], step[S.ACTION]
    messages += _split_messages(_text(tokenizer, obs[S.OBS_TEXT], obs[S.OBS_TOKENS]),
                                obs[S.OBS_ROLE], layout)
    messages.append({"role": _ASSISTANT,
                     "content": _text(tokenizer, act[S.ACT_TEXT], act[S.ACT_TOKENS])})
  last = turns[-1]
  if fmt == MESSAGES:
    row: dict[str, Any] = {"messages": messages}
  elif conversational:
    row = {"prompt": messages[:-1], "completion": messages[-1:]}
  else:
    row = {"prompt": messages[0]["content"], "completion": messages[-1]["content"]}
  row.update({
      "prompt_token_ids": [np.asarray(s[S.OBSERVATION][S.OBS_TOKENS]).tolist()
                           for s in turns],
      "completion_token_ids": [np.asarray(s[S.ACTION][S.ACT_TOKENS]).tolist()
                               for s in turns],
      "completion_logprobs": [np.asarray(s[S.ACTION_LOGPROBS], np.float64).tolist()
                              for s in turns],
      "reward": S.episode_return(episode),
      "prompt_id": episode[S.PROMPT_ID], "episode_id": episode[S.EPISODE_ID],
      "sample_index": int(episode[S.SAMPLE_INDEX]), "task": episode[S.TASK],
      "policy": dict(episode[S.POLICY]), "sampler": _plain_dict(episode[S.SAMPLER]),
      "roles": [s[S.OBSERVATION][S.OBS_ROLE] for s in turns],
      "tokenizer": config.tokenizer, "vocab_size": config.vocab_size,
  })
  if not multi_turn:  # one turn: plain lists, as TRL's tokenised columns are
    for key in ("prompt_token_ids", "completion_token_ids", "completion_logprobs"):
      row[key] = row[key][0]
  if config.reward_names:
    row["rewards"] = {name: float(sum(float(s[S.REWARDS][name]) for s in turns))
                      for name in config.reward_names}
    row["reward_names"] = list(config.reward_names)  # JSON objects lose their order
  if fmt == UNPAIRED_PREFERENCE:
    value = row["rewards"][LABEL_REWARD] if LABEL_REWARD in config.reward_names else (
        row["reward"])
    row["label"] = bool(value > 0)
  if fmt == DISTILL:
    arrays = last[S.TEACHER]
    row["teacher_topk_ids"] = np.asarray(arrays[S.TEACHER_TOPK_IDS]).tolist()
    row["teacher_topk_logprobs"] = np.asarray(arrays[S.TEACHER_TOPK_LOGPROBS],
                                              np.float64).tolist()
    row["teacher_token_logprobs"] = np.asarray(arrays[S.TEACHER_TOKEN_LOGPROB],
                                               np.float64).tolist()
  return row


def _plain_dict(value: Mapping[str, Any]) -> dict[str, Any]:
  return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in value.items()}


def _preference_rows(episode, lineage: Mapping[str, Any], tokenizer, conversational: bool,
                     implicit: bool) -> list[dict[str, Any]]:
  first = episode[S.STEPS][0]
  obs, act = first[S.OBSERVATION], first[S.ACTION]
  lengths = np.asarray(obs[S.OBS_CANDIDATE_LENGTHS])
  flat = np.asarray(obs[S.OBS_CANDIDATE_TOKENS])
  candidates = np.split(flat, np.cumsum(lengths)[:-1]) if len(lengths) else []
  ids = [c.decode() if isinstance(c, bytes) else str(c) for c in episode[S.CANDIDATE_IDS]]
  scores = np.asarray(act[S.ACT_SCORES], np.float64)
  ranking = [int(i) for i in np.asarray(act[S.ACT_RANKING])]
  choice = int(act[S.ACT_CHOICE])
  if choice < 0 or not candidates:  # a tie: no preferred candidate
    return []
  prompt_text = _text(tokenizer, obs[S.OBS_TEXT], obs[S.OBS_TOKENS])
  layouts = lineage.get(_TURN_MESSAGES)
  prompt: Any = prompt_text
  if conversational:
    prompt = _split_messages(prompt_text, obs[S.OBS_ROLE],
                             layouts[0] if isinstance(layouts, list) and layouts else None)

  def candidate(index):
    text = _text(tokenizer, "", candidates[index])
    return [{"role": _ASSISTANT, "content": text}] if conversational else text

  judge = _plain_dict(episode[S.JUDGE])
  rows = []
  for other in [i for i in ranking if i != choice]:
    row = {"prompt": prompt, "chosen": candidate(choice), "rejected": candidate(other)}
    if implicit:  # TRL's implicit prompt: the prompt starts both candidates
      row = {"chosen": prompt + row["chosen"], "rejected": prompt + row["rejected"]}
    rows.append({
        **row,
        "prompt_token_ids": np.asarray(obs[S.OBS_TOKENS]).tolist(),
        "chosen_token_ids": candidates[choice].tolist(),
        "rejected_token_ids": candidates[other].tolist(),
        "chosen_id": ids[choice], "rejected_id": ids[other],
        "score_chosen": float(scores[choice]), "score_rejected": float(scores[other]),
        "prompt_id": episode[S.PROMPT_ID], "episode_id": episode[S.EPISODE_ID],
        "task": episode[S.TASK], "judge": judge,
    })
  return rows


def export_jsonl(path: str | os.PathLike[str], out: str | os.PathLike[str], fmt: str,
                 split: str = "train", *, tokenizer_model: str | None = None,
                 where: Callable[[Mapping[str, Any]], bool] | None = None) -> int:
  """Writes ``fmt`` rows as JSON lines to ``out``; returns the row count."""
  rows = export_rows(path, fmt, split, tokenizer_model=tokenizer_model, where=where)
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, "w", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
  return len(rows)


def _datasets():
  try:
    import datasets  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise InteropError("Hugging Face datasets is not installed: pip install "
                       "'rlds_lm[hf]' (or datasets); JSONL needs nothing extra") from e
  return datasets


def export_hf(path: str | os.PathLike[str], out: str | os.PathLike[str], fmt: str,
              split: str = "train", *, tokenizer_model: str | None = None,
              where: Callable[[Mapping[str, Any]], bool] | None = None) -> int:
  """Saves ``fmt`` rows as a Hugging Face ``datasets.Dataset`` (Arrow) in ``out``."""
  datasets = _datasets()
  rows = export_rows(path, fmt, split, tokenizer_model=tokenizer_model, where=where)
  if not rows:
    raise InteropError(f"{path} gives no {fmt} rows (e.g. only ties): nothing to save")
  datasets.Dataset.from_list(rows).save_to_disk(os.fspath(out))
  return len(rows)


# --------------------------------------------------------------------------------------
# Import: reading rows.
# --------------------------------------------------------------------------------------


def read_rows(source: str | os.PathLike[str]) -> list[dict[str, Any]]:
  """Rows of a JSONL file or a ``datasets`` directory (``save_to_disk``; a DatasetDict
  gives the rows of its ``train`` split).

  Raises:
    RowError: a line that is not UTF-8, not JSON, or not a JSON object (file and line).
  """
  return [row for _, row in _located_rows(os.fspath(source))]


def _located_rows(source: str) -> list[tuple[str, dict[str, Any]]]:
  """(where, row) pairs: where is ``FILE:LINE`` (JSONL) or ``DIR row I``."""
  if os.path.isdir(source):
    datasets = _datasets()
    try:
      loaded = datasets.load_from_disk(source)
    except (OSError, ValueError, TypeError, KeyError) as e:
      raise InteropError(f"{source}: not a datasets directory (save_to_disk): {e}") from e
    if isinstance(loaded, datasets.DatasetDict):
      if "train" not in loaded:
        raise InteropError(f"{source}: a DatasetDict without a 'train' split "
                           f"({sorted(loaded)})")
      loaded = loaded["train"]
    return [(f"{source} row {i}", row) for i, row in enumerate(loaded)]
  try:
    f = open(source, "rb")  # pylint: disable=consider-using-with
  except OSError as e:
    raise InteropError(f"{source}: cannot be read ({e.strerror or e})") from e
  rows = []
  with f:
    for number, raw in enumerate(f, 1):
      where = f"{source}:{number}"
      try:
        line = raw.decode("utf-8-sig" if number == 1 else "utf-8")  # a BOM may start it
      except UnicodeDecodeError as e:
        raise RowError(where, f"not UTF-8 ({e.reason} at byte {e.start})") from e
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise RowError(where, f"not JSON ({e.msg})") from e
      except RecursionError as e:
        raise RowError(where, "JSON nested too deeply to read") from e
      except ValueError as e:  # an integer literal of more than 4300 digits
        raise RowError(where, "not readable JSON (an integer of more than "
                       f"{sys.get_int_max_str_digits()} digits)") from e
      if not isinstance(row, dict):
        raise RowError(where, f"expected a JSON object ({{...}}), found "
                       f"{_kind(row)}")
      rows.append((where, row))
  return rows


def _kind(value: Any) -> str:
  if value is None:
    return "null"
  names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
           list: "a list", dict: "an object"}
  return names.get(type(value), type(value).__name__)


# --------------------------------------------------------------------------------------
# Import: checked columns. Each raises RowError naming the row and the column.
# --------------------------------------------------------------------------------------


def _string(value: Any, column: str, where: str) -> str:
  if not isinstance(value, str):
    raise RowError(where, f"column {column!r}: expected a string, found {_kind(value)}")
  try:
    value.encode("utf-8")
  except UnicodeEncodeError as e:
    raise RowError(where, f"column {column!r}: not storable text ({e.reason} at "
                   f"character {e.start})") from e
  return value


def _opt_string(row: Mapping[str, Any], column: str, where: str, default: str = "") -> str:
  value = row.get(column)
  return default if value is None else _string(value, column, where)


def _integer(value: Any, column: str, where: str, bounds: tuple[int, int]) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise RowError(where, f"column {column!r}: expected an integer, found {_kind(value)}")
  value = int(value)
  if not bounds[0] <= value <= bounds[1]:
    raise RowError(where, f"column {column!r}: expected an integer in [{bounds[0]}, "
                   f"{bounds[1]}], found {value}")
  return value


def _number(value: Any, column: str, where: str) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float, np.integer,
                                                        np.floating)):
    raise RowError(where, f"column {column!r}: expected a number, found {_kind(value)}")
  try:
    number = float(value)
  except OverflowError as e:
    raise RowError(where, f"column {column!r}: {value} does not fit a float") from e
  if not math.isfinite(number):
    raise RowError(where, f"column {column!r}: expected a finite number, found {number}")
  return number


def _object(row: Mapping[str, Any], column: str, where: str) -> dict[str, Any]:
  value = row.get(column)
  if value is None:
    return {}
  if not isinstance(value, Mapping):
    raise RowError(where, f"column {column!r}: expected an object ({{...}}), found "
                   f"{_kind(value)}")
  return dict(value)


def _ids(value: Any, column: str, where: str, vocab_size: int) -> np.ndarray:
  """A flat list of token ids in [0, vocab_size)."""
  if not isinstance(value, (list, np.ndarray)):
    raise RowError(where, f"column {column!r}: expected a list of token ids, found "
                   f"{_kind(value)}")
  for i, item in enumerate(value):
    if isinstance(item, bool) or not isinstance(item, (int, np.integer)):
      raise RowError(where, f"column {column!r}: expected token ids (integers), found "
                     f"{_kind(item)} at index {i}")
    if not 0 <= item < vocab_size:
      raise RowError(where, f"column {column!r}: expected token ids in [0, {vocab_size}),"
                     f" found {item} at index {i}")
  return np.asarray(value, np.int32).reshape(-1)


def _floats(value: Any, column: str, where: str) -> np.ndarray:
  if not isinstance(value, (list, np.ndarray)):
    raise RowError(where, f"column {column!r}: expected a list of numbers, found "
                   f"{_kind(value)}")
  return np.asarray([_number(v, column, where) for v in value], np.float32).reshape(-1)


def _per_turn(row: Mapping[str, Any], column: str, count: int, where: str) -> list[Any]:
  """A per-turn column: one list per turn (a single-turn row may store a flat list)."""
  value = row.get(column)
  if not isinstance(value, (list, np.ndarray)):
    raise RowError(where, f"column {column!r}: expected a list, found {_kind(value)}")
  if count == 1 and (len(value) == 0 or not isinstance(value[0], (list, np.ndarray))):
    return [value]
  if len(value) != count:
    raise RowError(where, f"column {column!r}: expected one list per model turn "
                   f"({count}), found {len(value)}")
  return list(value)


def _need(row: Mapping[str, Any], keys: Sequence[str], where: str) -> None:
  missing = [k for k in keys if row.get(k) is None]
  if missing:
    raise RowError(where, f"missing {missing}; it has {sorted(row)}")


# --------------------------------------------------------------------------------------
# Import: conversations.
# --------------------------------------------------------------------------------------


def _conversation(value: Any, column: str, where: str) -> list[tuple[str, str]]:
  """A list of ``{"role", "content"}`` messages as (role, content) pairs."""
  if not isinstance(value, list) or not value:
    raise RowError(where, f"column {column!r}: expected a non-empty list of "
                   f"{{'role', 'content'}} messages, found {_kind(value)}")
  out = []
  for i, message in enumerate(value):
    if not isinstance(message, Mapping):
      raise RowError(where, f"column {column!r}: message {i}: expected an object with "
                     f"'role' and 'content', found {_kind(message)}")
    role = _string(message.get("role"), f"{column}[{i}].role", where)
    if role not in _MESSAGE_ROLES:
      raise RowError(where, f"column {column!r}: message {i}: role must be one of "
                     f"{_MESSAGE_ROLES}, found {role!r}")
    out.append((role, _string(message.get("content"), f"{column}[{i}].content", where)))
  return out


def _rollout_messages(row: Mapping[str, Any], fmt: str, where: str
                      ) -> tuple[list[tuple[str, str]], bool]:
  """(messages, conversational) of a rollout row: plain strings become a "prompt"
  message and an assistant message."""
  if fmt == MESSAGES:
    _need(row, ("messages",), where)
    return _conversation(row["messages"], "messages", where), True
  _need(row, ("prompt", "completion"), where)
  prompt, completion = row["prompt"], row["completion"]
  if isinstance(prompt, str) and isinstance(completion, str):
    return [("prompt", _string(prompt, "prompt", where)),
            (_ASSISTANT, _string(completion, "completion", where))], False
  if isinstance(prompt, list) and isinstance(completion, list):
    return (_conversation(prompt, "prompt", where)
            + _conversation(completion, "completion", where)), True
  raise RowError(where, f"'prompt' and 'completion' must both be strings or both be "
                 f"lists of {{'role', 'content'}} messages, found {_kind(prompt)} and "
                 f"{_kind(completion)}")


def _group_turns(messages: list[tuple[str, str]], where: str
                 ) -> list[tuple[list[tuple[str, str]], str]]:
  """(observation messages, model text) per model turn: the non-assistant messages
  before each assistant message form its observation."""
  if messages[-1][0] != _ASSISTANT:
    raise RowError(where, f"the conversation must end with an assistant message (the "
                   f"model turn), found {messages[-1][0]!r}")
  turns, pending = [], []
  for role, content in messages:
    if role == _ASSISTANT:
      turns.append((pending, content))
      pending = []
    else:
      pending.append((role, content))
  return turns


def _observation_of(messages: list[tuple[str, str]]) -> tuple[str, str, list[list[Any]]]:
  """(role, text, layout) of an observation made of ``messages``."""
  role = messages[0][0] if messages else "user"
  return (role, "\n".join(c for _, c in messages),
          [[r, len(c)] for r, c in messages])


def _implicit_prompt(chosen: Any, rejected: Any) -> int:
  """Length of the prompt that ``chosen`` and ``rejected`` share (TRL's implicit
  prompt): their common start; for text, a space just before the first difference goes
  with the candidates."""
  n = 0
  while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
    n += 1
  if isinstance(chosen, str) and 0 < n < min(len(chosen), len(rejected)) and (
      chosen[n - 1] == " "):
    n -= 1
  return n


# --------------------------------------------------------------------------------------
# Import: rows to episodes.
# --------------------------------------------------------------------------------------


def _locate(rows: Iterable[Any], source: str, where: Sequence[str] | None
            ) -> list[tuple[str, Any]]:
  rows = list(rows)
  where = list(where) if where is not None else [f"{source} row {i}"
                                                 for i in range(len(rows))]
  if not rows:
    raise InteropError(f"{source}: no rows")
  for w, row in zip(where, rows):
    if not isinstance(row, Mapping):
      raise RowError(w, f"expected an object, found {_kind(row)}")
  return list(zip(where, rows))


def _vocabulary(located: list[tuple[str, Mapping[str, Any]]], ids_column: str,
                tokenizer: tokenizers.Tokenizer) -> tuple[str, int, bool]:
  """(tokenizer name, vocab size, rows carry token ids) for the dataset.

  Rows with token ids keep their ``tokenizer`` / ``vocab_size`` columns (one value for
  all rows); rows without are tokenised here, so the dataset's tokenizer is the one
  used here whatever their columns say.
  """
  with_ids = [row.get(ids_column) is not None for _, row in located]
  if any(with_ids) and not all(with_ids):
    where = located[with_ids.index(not with_ids[0])][0]
    raise RowError(where, f"column {ids_column!r} is {'missing' if with_ids[0] else 'set'}"
                   f" here but {'set' if with_ids[0] else 'missing'} in {located[0][0]}: "
                   f"give token ids in every row or in none")
  if not all(with_ids):
    return tokenizer.name, tokenizer.vocab_size, False
  first_where, first = located[0]
  name = _opt_string(first, "tokenizer", first_where, tokenizer.name)
  if name != "byte" and not re.fullmatch(r"spm:[0-9a-f]{16}", name):
    raise RowError(first_where, f"column 'tokenizer': expected 'byte' or "
                   f"'spm:<16 hex digits>', found {name!r}")
  vocab = first.get("vocab_size")
  vocab = tokenizer.vocab_size if vocab is None else _integer(
      vocab, "vocab_size", first_where, (1, _INT32[1]))
  for where, row in located[1:]:
    if _opt_string(row, "tokenizer", where, name) != name:
      raise RowError(where, f"column 'tokenizer': {row['tokenizer']!r} differs from "
                     f"{name!r} of {first_where}: one dataset has one tokenizer")
    if row.get("vocab_size") is not None and row["vocab_size"] != vocab:
      raise RowError(where, f"column 'vocab_size': {row['vocab_size']!r} differs from "
                     f"{vocab} of {first_where}")
  return name, vocab, True


def _reward_names(located: list[tuple[str, Mapping[str, Any]]], fmt: str
                  ) -> tuple[str, ...]:
  where, first = located[0]
  names = first.get("reward_names")
  if names is None:
    names = sorted(_object(first, "rewards", where))
  elif not isinstance(names, list):
    raise RowError(where, f"column 'reward_names': expected a list of strings, found "
                   f"{_kind(names)}")
  names = [_string(n, "reward_names", where) for n in names]
  if len(set(names)) != len(names):
    raise RowError(where, f"column 'reward_names': a name is repeated: {names}")
  if fmt == UNPAIRED_PREFERENCE and LABEL_REWARD not in names:
    names.append(LABEL_REWARD)
  return tuple(names)


def _checked(where: str, build):
  """Runs ``build()``; an unforeseen failure on a row becomes a RowError naming it."""
  try:
    return build()
  except InteropError:
    raise
  except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError,
          RecursionError, UnicodeError) as e:
    raise RowError(where, f"{type(e).__name__}: {e}") from e


def _add_unique(episodes: list[dict[str, Any]], episode: dict[str, Any],
                seen: dict[str, str], where: str) -> None:
  """Appends ``episode`` unless a row before made the same one (same content id)."""
  episode_id = episode[S.EPISODE_ID]
  if episode_id in seen:
    raise RowError(where, f"the same episode ({episode_id}) as {seen[episode_id]}: "
                   f"de-duplicate the rows, or give them distinct prompt_id / "
                   f"sample_index columns")
  seen[episode_id] = where
  episodes.append(episode)


def _teacher_arrays(row: Mapping[str, Any], length: int, top_k: int, vocab_size: int,
                    where: str) -> dict[str, np.ndarray]:
  """The teacher columns of a ``distill`` row, checked against the completion's length."""
  _need(row, ("teacher_topk_ids", "teacher_topk_logprobs", "teacher_token_logprobs"),
        where)
  expected = {"teacher_topk_ids": (length, top_k),
              "teacher_topk_logprobs": (length, top_k),
              "teacher_token_logprobs": (length,)}
  for column, shape in expected.items():
    value = row[column]
    found = None
    if not isinstance(value, list):
      found = _kind(value)
    elif len(value) != shape[0]:
      found = f"{len(value)} rows"
    elif len(shape) == 2:
      bad = [i for i, v in enumerate(value) if not isinstance(v, list) or len(v) != shape[1]]
      if bad:
        v = value[bad[0]]
        found = (f"row {bad[0]} of {len(v)} values" if isinstance(v, list)
                 else f"row {bad[0]}: {_kind(v)}")
    if found:
      raise RowError(where, f"column {column!r}: expected shape {shape} (the "
                     f"completion's {length} tokens x k={top_k}), found {found} (rows "
                     f"without completion_token_ids are tokenised here, with EOS "
                     f"appended: give the token ids the teacher scored)")
  ids = _ids([i for r in row["teacher_topk_ids"] for i in r], "teacher_topk_ids", where,
             vocab_size)
  lps = _floats([v for r in row["teacher_topk_logprobs"] for v in r],
                "teacher_topk_logprobs", where)
  return {S.TEACHER_TOPK_IDS: ids.reshape(length, top_k),
          S.TEACHER_TOPK_LOGPROBS: lps.reshape(length, top_k),
          S.TEACHER_TOKEN_LOGPROB: _floats(row["teacher_token_logprobs"],
                                           "teacher_token_logprobs", where)}


def rollout_episodes(rows: Iterable[Mapping[str, Any]], *, source: str, fmt: str,
                     tokenizer: tokenizers.Tokenizer | None = None,
                     where: Sequence[str] | None = None
                     ) -> tuple[S.SchemaConfig, list[dict[str, Any]]]:
  """``prompt_completion`` / ``messages`` / ``unpaired_preference`` / ``distill`` rows ->
  (schema, validated rollout episodes).

  ``where``: each row's location for errors (default ``SOURCE row I``).

  Raises:
    RowError: a row that cannot be imported, naming it.
  """
  from rlds_lm import validate  # pylint: disable=g-import-not-at-top
  located = _locate(rows, source, where)
  tokenizer = tokenizer or tokenizers.ByteTokenizer()
  top_k = 0
  if fmt == DISTILL:
    first_where, first = located[0]
    ids = first.get("teacher_topk_ids")
    top_k = len(ids[0]) if isinstance(ids, list) and ids and isinstance(ids[0], list) else 0
    if not top_k:
      raise RowError(first_where, "format 'distill' needs teacher_topk_ids "
                     "[completion tokens][k] (and teacher_topk_logprobs, "
                     "teacher_token_logprobs)")
  name, vocab_size, has_ids = _vocabulary(located, "completion_token_ids", tokenizer)
  reward_names = _reward_names(located, fmt)
  config = S.SchemaConfig(vocab_size=vocab_size, tokenizer=name, teacher_top_k=top_k,
                          reward_names=reward_names)
  episodes, seen = [], {}
  for index, (row_where, row) in enumerate(located):
    episode = _checked(row_where, lambda: _rollout_episode(
        row, index, config, tokenizer, fmt, has_ids, source, row_where))
    _checked(row_where, lambda: validate.validate_episode(episode, config))
    _add_unique(episodes, episode, seen, row_where)
  return config, episodes


def _rollout_episode(row: Mapping[str, Any], index: int, config: S.SchemaConfig,
                     tokenizer: tokenizers.Tokenizer, fmt: str, has_ids: bool, source: str,
                     where: str) -> dict[str, Any]:
  messages, conversational = _rollout_messages(row, fmt, where)
  turns = _group_turns(messages, where)
  n = len(turns)
  observations = [_observation_of(obs) for obs, _ in turns]
  if has_ids:
    _need(row, ("prompt_token_ids",), where)
    prompt_ids = [_ids(v, "prompt_token_ids", where, config.vocab_size)
                  for v in _per_turn(row, "prompt_token_ids", n, where)]
    action_ids = [_ids(v, "completion_token_ids", where, config.vocab_size)
                  for v in _per_turn(row, "completion_token_ids", n, where)]
  else:
    prompt_ids = [tokenizer.encode(text, add_bos=i == 0)
                  for i, (_, text, _) in enumerate(observations)]
    action_ids = [tokenizer.encode(text, add_eos=True) for _, text in turns]
  logprobs = [None] * n
  if row.get("completion_logprobs") is not None:
    logprobs = [_floats(v, "completion_logprobs", where)
                for v in _per_turn(row, "completion_logprobs", n, where)]
  roles = [role if role in S.ROLES else "user" for role, _, _ in observations]
  if row.get("roles") is not None:
    given = row["roles"]
    if not isinstance(given, list) or len(given) != n:
      raise RowError(where, f"column 'roles': expected a list of {n} roles (one per "
                     f"model turn), found {_kind(given)}")
    roles = [_string(r, "roles", where) for r in given]
    bad = [r for r in roles if r not in S.ROLES]
    if bad:
      raise RowError(where, f"column 'roles': expected roles in {S.ROLES}, found {bad[0]!r}")
  reward = 0.0 if row.get("reward") is None else _number(row["reward"], "reward", where)
  rewards = {k: _number(v, f"rewards.{k}", where)
             for k, v in _object(row, "rewards", where).items()}
  if fmt == UNPAIRED_PREFERENCE:
    _need(row, ("label",), where)
    if not isinstance(row["label"], (bool, np.bool_)):
      raise RowError(where, f"column 'label': expected true or false, found "
                     f"{_kind(row['label'])}")
    rewards[LABEL_REWARD] = float(bool(row["label"]))
    if row.get("reward") is None:
      reward = rewards[LABEL_REWARD]
  if set(rewards) != set(config.reward_names) and (rewards or config.reward_names):
    raise RowError(where, f"column 'rewards': expected the names {list(config.reward_names)}"
                   f" (from the first row), found {sorted(rewards)}")
  out_turns = []
  for i in range(n):
    act_ids = action_ids[i]
    last = i == n - 1
    teacher = (_teacher_arrays(row, len(act_ids), config.teacher_top_k, config.vocab_size,
                               where) if config.teacher_top_k else None)
    out_turns.append(S.Turn(
        S.observation(config, prompt_ids[i], observations[i][1], roles[i]),
        action_tokens=act_ids, action_text=turns[i][1], action_logprobs=logprobs[i],
        reward=reward if last else 0.0,
        rewards=rewards if last and config.reward_names else None, teacher=teacher))
  policy, sampler = _object(row, "policy", where), _object(row, "sampler", where)
  lineage: dict[str, Any] = {"imported_from": source, "format": fmt, "row": index}
  if conversational:
    lineage[_CONVERSATIONAL] = True
    lineage[_TURN_MESSAGES] = [layout for _, _, layout in observations]

  def sampler_value(key, default, convert):
    value = sampler.get(key)
    return default if value is None else convert(value, f"sampler.{key}", where)

  prompt_column = row.get("messages") if fmt == MESSAGES else row["prompt"]
  return S.rollout_episode(
      config, out_turns,
      prompt_id=_opt_string(row, "prompt_id", where) or S.content_id(
          prompt_column if fmt != MESSAGES else [list(m) for m in messages[:-1]],
          prefix="p-"),
      task=_opt_string(row, "task", where),
      sample_index=(0 if row.get("sample_index") is None else _integer(
          row["sample_index"], "sample_index", where, (0, _INT32[1]))),
      policy_name=(_string(policy[S.POLICY_NAME], "policy.name", where)
                   if policy.get(S.POLICY_NAME) is not None else "imported"),
      policy_digest=_opt_string(policy, S.POLICY_DIGEST, where),
      temperature=sampler_value(S.SAMPLER_TEMPERATURE, 1.0, _number),
      top_k=sampler_value(S.SAMPLER_TOP_K, 0, lambda v, c, w: _integer(v, c, w,
                                                                     (0, _INT32[1]))),
      top_p=sampler_value(S.SAMPLER_TOP_P, 1.0, _number),
      seed=sampler_value(S.SAMPLER_SEED, 0, lambda v, c, w: _integer(v, c, w, _INT64)),
      lineage=lineage)


def preference_episodes(rows: Iterable[Mapping[str, Any]], *, source: str,
                        tokenizer: tokenizers.Tokenizer | None = None,
                        where: Sequence[str] | None = None
                        ) -> tuple[S.SchemaConfig, list[dict[str, Any]]]:
  """``preference`` rows -> (schema, validated preference episodes: candidates
  [chosen, rejected], choice 0).

  Takes TRL's standard rows (strings), conversational rows (``prompt`` a list of
  messages, ``chosen`` / ``rejected`` one assistant message each) and implicit-prompt
  rows (no ``prompt``: the common start of ``chosen`` and ``rejected``).

  Raises:
    RowError: a row that cannot be imported, naming it.
  """
  from rlds_lm import validate  # pylint: disable=g-import-not-at-top
  located = _locate(rows, source, where)
  tokenizer = tokenizer or tokenizers.ByteTokenizer()
  name, vocab_size, has_ids = _vocabulary(located, "chosen_token_ids", tokenizer)
  config = S.SchemaConfig(kind=S.PREFERENCE, vocab_size=vocab_size, tokenizer=name)
  episodes, seen = [], {}
  for index, (row_where, row) in enumerate(located):
    episode = _checked(row_where, lambda: _preference_episode(
        row, index, config, tokenizer, has_ids, source, row_where))
    _checked(row_where, lambda: validate.validate_episode(episode, config))
    _add_unique(episodes, episode, seen, row_where)
  return config, episodes


def _candidate(value: Any, column: str, where: str) -> str:
  """A conversational candidate's text: exactly one assistant message."""
  messages = _conversation(value, column, where)
  if len(messages) != 1 or messages[0][0] != _ASSISTANT:
    raise RowError(where, f"column {column!r}: a conversational candidate must be one "
                   f"assistant message, found roles {[r for r, _ in messages]}")
  return messages[0][1]


def _preference_episode(row: Mapping[str, Any], index: int, config: S.SchemaConfig,
                        tokenizer: tokenizers.Tokenizer, has_ids: bool, source: str,
                        where: str) -> dict[str, Any]:
  _need(row, ("chosen", "rejected"), where)
  chosen, rejected = row["chosen"], row["rejected"]
  lineage: dict[str, Any] = {"imported_from": source, "format": PREFERENCE, "row": index}
  if row.get("prompt") is None:  # implicit prompt: the start both candidates share
    if not (isinstance(chosen, str) and isinstance(rejected, str)) and not (
        isinstance(chosen, list) and isinstance(rejected, list)):
      raise RowError(where, f"'chosen' and 'rejected' must both be strings or both be "
                     f"message lists, found {_kind(chosen)} and {_kind(rejected)}")
    if isinstance(chosen, list):
      chosen_m = _conversation(chosen, "chosen", where)
      rejected_m = _conversation(rejected, "rejected", where)
      n = _implicit_prompt(chosen_m, rejected_m)
      prompt: Any = [{"role": r, "content": c} for r, c in chosen_m[:n]]
      chosen = [{"role": r, "content": c} for r, c in chosen_m[n:]]
      rejected = [{"role": r, "content": c} for r, c in rejected_m[n:]]
    else:
      n = _implicit_prompt(_string(chosen, "chosen", where),
                           _string(rejected, "rejected", where))
      prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
    lineage[_IMPLICIT_PROMPT] = True
  else:
    prompt = row["prompt"]
  kinds = {type(prompt), type(chosen), type(rejected)}
  if kinds == {str}:
    prompt_role, prompt_text = "judge", _string(prompt, "prompt", where)
    chosen_text = _string(chosen, "chosen", where)
    rejected_text = _string(rejected, "rejected", where)
  elif kinds == {list}:
    messages = _conversation(prompt, "prompt", where) if prompt else []
    if any(r == _ASSISTANT for r, _ in messages[-1:]):
      raise RowError(where, "column 'prompt': the prompt must not end with an assistant "
                     "message (the candidates are the model turn)")
    _, prompt_text, layout = _observation_of(messages)
    prompt_role = "judge"
    chosen_text = _candidate(chosen, "chosen", where)
    rejected_text = _candidate(rejected, "rejected", where)
    lineage[_CONVERSATIONAL] = True
    lineage[_TURN_MESSAGES] = [layout]
  else:
    raise RowError(where, f"'prompt', 'chosen' and 'rejected' must all be strings or all "
                   f"be message lists, found {_kind(prompt)}, {_kind(chosen)} and "
                   f"{_kind(rejected)}")

  def ids(key, text, **kw):
    if has_ids:
      _need(row, (f"{key}_token_ids",), where)
      return _ids(row[f"{key}_token_ids"], f"{key}_token_ids", where, config.vocab_size)
    return tokenizer.encode(text, **kw)

  prompt_ids = ids("prompt", prompt_text, add_bos=True)
  chosen_ids = ids("chosen", chosen_text, add_eos=True)
  rejected_ids = ids("rejected", rejected_text, add_eos=True)
  candidate_ids = [
      _opt_string(row, "chosen_id", where) or S.content_id(chosen_ids.tolist(), prefix="c-"),
      _opt_string(row, "rejected_id", where) or S.content_id(rejected_ids.tolist(),
                                                              prefix="c-")]
  scores = [0.0 if row.get(k) is None else _number(row[k], k, where)
            for k in ("score_chosen", "score_rejected")]
  judge = _object(row, "judge", where)
  return S.preference_episode(
      config, S.observation(config, prompt_ids, prompt_text, prompt_role), candidate_ids,
      [chosen_ids, rejected_ids],
      prompt_id=_opt_string(row, "prompt_id", where) or S.content_id(
          prompt_text, prefix="p-"),
      choice=0, ranking=[0, 1], scores=scores,
      judge_name=_opt_string(judge, S.JUDGE_NAME, where, "imported") or "imported",
      judge_digest=_opt_string(judge, S.JUDGE_DIGEST, where),
      judge_kind=_opt_string(judge, S.JUDGE_KIND, where) or "human",
      task=_opt_string(row, "task", where), lineage=lineage)


def import_rows(source: str | os.PathLike[str], fmt: str, *, data_dir: str, name: str,
                version: str = "1.0.0", tokenizer: tokenizers.Tokenizer | None = None
                ) -> str:
  """Publishes the rows of ``source`` (JSONL or a ``datasets`` directory) as a TFDS
  dataset of RLDS episodes; returns its directory. The dataset lineage names the source.

  Every row is checked and its episode validated before anything is written: nothing is
  published when a row is refused.

  Raises:
    RowError: a row that cannot be imported (its file and line, the column, what was
      expected and found).
    InteropError: an unknown format, or a source without rows.
  """
  from rlds_lm import publish as P  # pylint: disable=g-import-not-at-top
  if fmt not in FORMATS:
    raise InteropError(f"format must be one of {FORMATS}, found {fmt!r}")
  try:  # refuse a bad name before reading a single row
    P.check_names(name, version)
  except ValueError as e:
    raise InteropError(str(e)) from e
  source = os.path.abspath(os.fspath(source))
  if not os.path.exists(source):
    raise InteropError(f"{source} does not exist")
  located = _located_rows(source)
  where = [w for w, _ in located]
  rows = [r for _, r in located]
  if fmt == PREFERENCE:
    config, episodes = preference_episodes(rows, source=source, tokenizer=tokenizer,
                                           where=where)
  else:
    config, episodes = rollout_episodes(rows, source=source, fmt=fmt, tokenizer=tokenizer,
                                        where=where)
  by_id = {e[S.EPISODE_ID]: w for e, w in zip(episodes, where)}
  try:
    return P.publish({"train": episodes}, data_dir=data_dir, name=name, config=config,
                     version=version, description=f"Imported from {source} ({fmt} rows).",
                     lineage={"imported_from": source, "format": fmt, "rows": len(rows)})
  except (ValueError, TypeError, OverflowError) as e:
    found = [w for episode_id, w in by_id.items() if episode_id in str(e)]
    if found:  # a refusal of one episode: name its row
      raise RowError(found[0], str(e)) from e
    raise
