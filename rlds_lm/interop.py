"""Published datasets to and from the Hugging Face world: TRL-style JSONL and ``datasets``.

Three row formats, the ones TRL's trainers read:

* ``prompt_completion`` (rollout datasets): ``prompt``, ``completion`` (strings for
  single-turn episodes; for multi-turn ones TRL's conversational form, lists of
  ``{"role", "content"}`` messages with the last model turn as the completion);
* ``preference`` (preference datasets): ``prompt``, ``chosen``, ``rejected``, one row per
  (preferred, other) candidate pair of a judgement; ties give no row;
* ``distill`` (rollout datasets with teacher top-k, single-turn): ``prompt_completion``
  plus ``teacher_topk_ids`` / ``teacher_topk_logprobs`` [completion tokens][k] and
  ``teacher_token_logprobs`` [completion tokens], for offline distillation (GKD-style
  trainers with a stored teacher). Sampled-k teacher draws are not exported.

Every row also carries what the episode knew: ``prompt_id``, ``episode_id``, the token
ids (``prompt_token_ids``, ``completion_token_ids``, candidate ids), rewards, the policy
and sampler; the import uses them, so a single-turn rollout or a two-candidate judgement
exported and imported back is the same episode (same id, tokens, log-probs, rewards,
teacher top-k) with lineage naming the file it came from. Not carried: per-token
rewards, thinking masks, images, the invalid flag, sampled-k draws; multi-turn episodes
keep every turn's tokens and roles but come back with their rewards summed onto the last
turn; a judgement of N > 2 candidates becomes N - 1 pairwise ones (TRL's format). Rows
made elsewhere need only the text columns: they are tokenised with the byte tokenizer
(or ``tokenizer=``) and given content-derived ids.

Writers: :func:`export_jsonl` (one JSON object per line) and :func:`export_hf`
(``datasets.Dataset.save_to_disk``, Arrow). Readers: :func:`import_rows` from either
(:func:`read_rows`), publishing a TFDS dataset.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from rlds_lm import schema as S
from rlds_lm import tokenizers

PROMPT_COMPLETION, PREFERENCE, DISTILL = "prompt_completion", "preference", "distill"
FORMATS = (PROMPT_COMPLETION, PREFERENCE, DISTILL)
_ASSISTANT = "assistant"
_IMPORT_ROLES = {"user": "user", "system": "system", "tool": "tool", "prompt": "prompt"}


class InteropError(ValueError):
  """A dataset or a row that the requested format cannot represent."""


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
  if fmt == PREFERENCE:
    return [{**row, "tokenizer": config.tokenizer, "vocab_size": config.vocab_size}
            for e in episodes for row in _preference_rows(e, tokenizer)]
  multi_turn = any(len(e[S.STEPS]) > 2 for e in episodes)
  if fmt == DISTILL and multi_turn:
    raise InteropError(f"{path} has multi-turn episodes; format 'distill' holds one "
                       f"completion per row")
  return [_rollout_row(e, config, tokenizer, multi_turn, fmt == DISTILL) for e in episodes]


def _rollout_row(episode, config: S.SchemaConfig, tokenizer, conversational: bool,
                 teacher: bool) -> dict[str, Any]:
  turns = [s for s in episode[S.STEPS] if not s[S.IS_LAST]]
  if not turns:
    raise InteropError(f"episode {episode[S.EPISODE_ID]} has no model turn")
  messages = []
  for step in turns:
    obs, act = step[S.OBSERVATION], step[S.ACTION]
    messages.append({"role": _role(obs[S.OBS_ROLE]),
                     "content": _text(tokenizer, obs[S.OBS_TEXT], obs[S.OBS_TOKENS])})
    messages.append({"role": _ASSISTANT,
                     "content": _text(tokenizer, act[S.ACT_TEXT], act[S.ACT_TOKENS])})
  last = turns[-1]
  row = {
      "prompt": messages[:-1] if conversational else messages[0]["content"],
      "completion": messages[-1:] if conversational else messages[1]["content"],
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
  }
  if not conversational:  # one turn: plain lists, as TRL's tokenised columns are
    for key in ("prompt_token_ids", "completion_token_ids", "completion_logprobs"):
      row[key] = row[key][0]
  if config.reward_names:
    row["rewards"] = {name: float(sum(float(s[S.REWARDS][name]) for s in turns))
                      for name in config.reward_names}
    row["reward_names"] = list(config.reward_names)  # JSON objects lose their order
  if teacher:
    arrays = last[S.TEACHER]
    row["teacher_topk_ids"] = np.asarray(arrays[S.TEACHER_TOPK_IDS]).tolist()
    row["teacher_topk_logprobs"] = np.asarray(arrays[S.TEACHER_TOPK_LOGPROBS],
                                              np.float64).tolist()
    row["teacher_token_logprobs"] = np.asarray(arrays[S.TEACHER_TOKEN_LOGPROB],
                                               np.float64).tolist()
  return row


def _plain_dict(value: Mapping[str, Any]) -> dict[str, Any]:
  return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in value.items()}


def _preference_rows(episode, tokenizer) -> list[dict[str, Any]]:
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
  prompt = _text(tokenizer, obs[S.OBS_TEXT], obs[S.OBS_TOKENS])
  judge = _plain_dict(episode[S.JUDGE])
  rows = []
  for other in [i for i in ranking if i != choice]:
    rows.append({
        "prompt": prompt,
        "chosen": _text(tokenizer, "", candidates[choice]),
        "rejected": _text(tokenizer, "", candidates[other]),
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
# Import.
# --------------------------------------------------------------------------------------


def read_rows(source: str | os.PathLike[str]) -> list[dict[str, Any]]:
  """Rows of a JSONL file or a ``datasets`` directory (``save_to_disk``; a DatasetDict
  gives the rows of its ``train`` split)."""
  source = os.fspath(source)
  if os.path.isdir(source):
    datasets = _datasets()
    loaded = datasets.load_from_disk(source)
    if isinstance(loaded, datasets.DatasetDict):
      if "train" not in loaded:
        raise InteropError(f"{source}: a DatasetDict without a 'train' split "
                           f"({sorted(loaded)})")
      loaded = loaded["train"]
    return list(loaded)
  rows = []
  with open(source, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if line.strip():
        try:
          rows.append(json.loads(line))
        except json.JSONDecodeError as e:
          raise InteropError(f"{source}:{number}: not JSON ({e.msg})") from e
  return rows


def _need(row: Mapping[str, Any], keys: Sequence[str], where: str) -> None:
  missing = [k for k in keys if row.get(k) is None]
  if missing:
    raise InteropError(f"{where}: missing {missing}; it has {sorted(row)}")


def _messages(value: Any, where: str) -> list[dict[str, str]]:
  if isinstance(value, str):
    return [{"role": "prompt", "content": value}]
  if isinstance(value, list) and all(isinstance(m, Mapping) and "content" in m
                                     for m in value):
    return [{"role": m.get("role") or "user", "content": m["content"]} for m in value]
  raise InteropError(f"{where}: prompt / completion must be a string or a list of "
                     f"{{'role', 'content'}} messages, found {type(value).__name__}")


def _turns_of(row: Mapping[str, Any], where: str) -> list[tuple[str, str, str]]:
  """(observation role, observation text, model text) per model turn."""
  completion = row["completion"]
  messages = _messages(row["prompt"], where) + (
      [{"role": _ASSISTANT, "content": completion}] if isinstance(completion, str)
      else _messages(completion, where))
  if messages[-1]["role"] != _ASSISTANT:
    raise InteropError(f"{where}: the completion does not end with an assistant message")
  turns, pending = [], []
  for m in messages:
    if m["role"] == _ASSISTANT:
      role = pending[0]["role"] if pending else "user"
      turns.append((_IMPORT_ROLES.get(role, "user"),
                    "\n".join(p["content"] for p in pending), m["content"]))
      pending = []
    else:
      pending.append(m)
  return turns


def _as_lists(value: Any, count: int) -> list[Any]:
  """Token columns: one list per turn (a single-turn row stores a flat list)."""
  if count == 1 and (not value or not isinstance(value[0], list)):
    return [value]
  return list(value)


def _add_unique(episodes: list[dict[str, Any]], episode: dict[str, Any],
                seen: dict[str, str], where: str) -> None:
  """Appends ``episode`` unless a row before made the same one (same content id)."""
  episode_id = episode[S.EPISODE_ID]
  if episode_id in seen:
    raise InteropError(f"{where} is the same episode ({episode_id}) as {seen[episode_id]}: "
                       f"de-duplicate the rows, or give them distinct prompt_id / "
                       f"sample_index columns")
  seen[episode_id] = where
  episodes.append(episode)


def _teacher_arrays(row: Mapping[str, Any], length: int, top_k: int, where: str
                    ) -> dict[str, np.ndarray]:
  """The teacher columns of a ``distill`` row, checked against the completion's length."""
  _need(row, ("teacher_topk_ids", "teacher_topk_logprobs", "teacher_token_logprobs"),
        where)
  arrays = {
      S.TEACHER_TOPK_IDS: np.asarray(row["teacher_topk_ids"], np.int32),
      S.TEACHER_TOPK_LOGPROBS: np.asarray(row["teacher_topk_logprobs"], np.float32),
      S.TEACHER_TOKEN_LOGPROB: np.asarray(row["teacher_token_logprobs"], np.float32)}
  expected = {S.TEACHER_TOPK_IDS: (length, top_k), S.TEACHER_TOPK_LOGPROBS: (length, top_k),
              S.TEACHER_TOKEN_LOGPROB: (length,)}
  for key, shape in expected.items():
    if arrays[key].shape != shape:
      raise InteropError(
          f"{where}: teacher {key} has shape {arrays[key].shape}, the completion's "
          f"{length} tokens need {shape} (rows without completion_token_ids are "
          f"tokenised here, with EOS appended: give the token ids the teacher scored)")
  return arrays


def rollout_episodes(rows: Iterable[Mapping[str, Any]], *, source: str, fmt: str,
                     tokenizer: tokenizers.Tokenizer | None = None
                     ) -> tuple[S.SchemaConfig, list[dict[str, Any]]]:
  """``prompt_completion`` / ``distill`` rows -> (schema, rollout episodes)."""
  rows = list(rows)
  if not rows:
    raise InteropError(f"{source}: no rows")
  tokenizer = tokenizer or tokenizers.ByteTokenizer()
  first = rows[0]
  top_k = 0
  if fmt == DISTILL:
    ids = first.get("teacher_topk_ids")
    top_k = len(ids[0]) if ids and isinstance(ids[0], list) else 0
    if not top_k:
      raise InteropError(f"{source} row 0: format 'distill' needs teacher_topk_ids "
                         f"[completion tokens][k] (and teacher_topk_logprobs, "
                         f"teacher_token_logprobs)")
  reward_names = tuple(first.get("reward_names") or sorted(first.get("rewards") or {}))
  vocab_size = int(first.get("vocab_size") or tokenizer.vocab_size)
  config = S.SchemaConfig(vocab_size=vocab_size,
                          tokenizer=first.get("tokenizer") or tokenizer.name,
                          teacher_top_k=top_k, reward_names=reward_names)
  episodes, seen = [], {}
  for index, row in enumerate(rows):
    where = f"{source} row {index}"
    _need(row, ("prompt", "completion"), where)
    turns = _turns_of(row, where)
    has_ids = row.get("completion_token_ids") is not None
    prompt_ids = (_as_lists(row["prompt_token_ids"], len(turns)) if has_ids else
                  [tokenizer.encode(t, add_bos=i == 0) for i, (_, t, _) in enumerate(turns)])
    action_ids = (_as_lists(row["completion_token_ids"], len(turns)) if has_ids else
                  [tokenizer.encode(t, add_eos=True) for _, _, t in turns])
    logprobs = (_as_lists(row["completion_logprobs"], len(turns))
                if row.get("completion_logprobs") is not None else [None] * len(turns))
    roles = row.get("roles") or [role for role, _, _ in turns]
    if not len(prompt_ids) == len(action_ids) == len(turns) == len(roles):
      raise InteropError(f"{where}: {len(turns)} model turns but token columns for "
                         f"{len(action_ids)}")
    out_turns = []
    for i, ((_, obs_text, act_text), obs_ids, act_ids, lps) in enumerate(
        zip(turns, prompt_ids, action_ids, logprobs)):
      act_ids = np.asarray(act_ids, np.int32)
      last = i == len(turns) - 1
      teacher = _teacher_arrays(row, len(act_ids), top_k, where) if top_k else None
      rewards = ({k: float(v) for k, v in row["rewards"].items()}
                 if last and reward_names else None)
      out_turns.append(S.Turn(
          S.observation(config, np.asarray(obs_ids, np.int32), obs_text, roles[i]),
          action_tokens=act_ids, action_text=act_text,
          action_logprobs=None if lps is None else np.asarray(lps, np.float32),
          reward=float(row.get("reward") or 0.0) if last else 0.0,
          rewards=rewards, teacher=teacher))
    policy, sampler = row.get("policy") or {}, row.get("sampler") or {}
    episode = S.rollout_episode(
        config, out_turns, prompt_id=row.get("prompt_id") or S.content_id(
            row["prompt"], prefix="p-"),
        task=row.get("task") or "", sample_index=int(row.get("sample_index") or 0),
        policy_name=policy.get(S.POLICY_NAME, "imported"),
        policy_digest=policy.get(S.POLICY_DIGEST, ""),
        temperature=float(sampler.get(S.SAMPLER_TEMPERATURE, 1.0)),
        top_k=int(sampler.get(S.SAMPLER_TOP_K, 0)),
        top_p=float(sampler.get(S.SAMPLER_TOP_P, 1.0)),
        seed=int(sampler.get(S.SAMPLER_SEED, 0)),
        lineage={"imported_from": source, "format": fmt, "row": index})
    _add_unique(episodes, episode, seen, where)
  return config, episodes


def preference_episodes(rows: Iterable[Mapping[str, Any]], *, source: str,
                        tokenizer: tokenizers.Tokenizer | None = None
                        ) -> tuple[S.SchemaConfig, list[dict[str, Any]]]:
  """``preference`` rows -> (schema, preference episodes: candidates [chosen, rejected],
  choice 0)."""
  rows = list(rows)
  if not rows:
    raise InteropError(f"{source}: no rows")
  tokenizer = tokenizer or tokenizers.ByteTokenizer()
  config = S.SchemaConfig(kind=S.PREFERENCE,
                          vocab_size=int(rows[0].get("vocab_size") or tokenizer.vocab_size),
                          tokenizer=rows[0].get("tokenizer") or tokenizer.name)
  episodes, seen = [], {}
  for index, row in enumerate(rows):
    where = f"{source} row {index}"
    _need(row, ("prompt", "chosen", "rejected"), where)
    if not all(isinstance(row[k], str) for k in ("prompt", "chosen", "rejected")):
      raise InteropError(f"{where}: only the standard (string) preference format is "
                         f"imported; conversational rows are not")
    def ids(key, text, **kw):
      given = row.get(f"{key}_token_ids")
      return np.asarray(given if given is not None else tokenizer.encode(text, **kw),
                        np.int32)
    prompt = ids("prompt", row["prompt"], add_bos=True)
    chosen = ids("chosen", row["chosen"], add_eos=True)
    rejected = ids("rejected", row["rejected"], add_eos=True)
    candidate_ids = [row.get("chosen_id") or S.content_id(chosen.tolist(), prefix="c-"),
                     row.get("rejected_id") or S.content_id(rejected.tolist(), prefix="c-")]
    scores = [float(row.get("score_chosen") or 0.0), float(row.get("score_rejected") or 0.0)]
    judge = row.get("judge") or {}
    episode = S.preference_episode(
        config, S.observation(config, prompt, row["prompt"], "judge"), candidate_ids,
        [chosen, rejected], prompt_id=row.get("prompt_id") or S.content_id(
            row["prompt"], prefix="p-"),
        choice=0, ranking=[0, 1], scores=scores,
        judge_name=judge.get(S.JUDGE_NAME, "imported"),
        judge_digest=judge.get(S.JUDGE_DIGEST, ""),
        judge_kind=judge.get(S.JUDGE_KIND) or "human", task=row.get("task") or "",
        lineage={"imported_from": source, "format": PREFERENCE, "row": index})
    _add_unique(episodes, episode, seen, where)
  return config, episodes


def import_rows(source: str | os.PathLike[str], fmt: str, *, data_dir: str, name: str,
                version: str = "1.0.0", tokenizer: tokenizers.Tokenizer | None = None
                ) -> str:
  """Publishes the rows of ``source`` (JSONL or a ``datasets`` directory) as a TFDS
  dataset of RLDS episodes; returns its directory. The dataset lineage names the source.
  """
  from rlds_lm import publish as P  # pylint: disable=g-import-not-at-top
  if fmt not in FORMATS:
    raise InteropError(f"format must be one of {FORMATS}, found {fmt!r}")
  source = os.path.abspath(os.fspath(source))
  rows = read_rows(source)
  if fmt == PREFERENCE:
    config, episodes = preference_episodes(rows, source=source, tokenizer=tokenizer)
  else:
    config, episodes = rollout_episodes(rows, source=source, fmt=fmt, tokenizer=tokenizer)
  return P.publish({"train": episodes}, data_dir=data_dir, name=name, config=config,
                   version=version, description=f"Imported from {source} ({fmt} rows).",
                   lineage={"imported_from": source, "format": fmt, "rows": len(rows)})
