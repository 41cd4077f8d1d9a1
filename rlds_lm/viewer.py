"""A self-contained HTML page for looking at episodes (``rlds-lm inspect --html``).

One file, no network: inline CSS, a few lines of inline JavaScript, the data as HTML.

* Rollouts are grouped by prompt (the N samples of a Best-of-N group side by side, the
  samples with the group's best reward marked unless all tie). Each completion is shown token by token, coloured by
  ``color``: ``teacher`` = how much less likely the teacher finds the token than the
  student did (``log p_student - log p_teacher``, red the more the teacher disagrees;
  needs teacher data; where no behaviour log-probs were stored they read 0, so the
  colour is the teacher's surprise alone), ``reward`` = per-token reward (green
  positive, red negative), ``none``; ``auto`` picks teacher, else reward where any
  token reward is non-zero, else none. Each token is decoded alone, so a multi-byte
  character shows as replacement characters. Hovering a token shows its id and both log-probs and the teacher's top
  choice.
* Preference judgements show the prompt and the candidates side by side, the chosen
  one marked, with their scores and rank.
* A reward slider hides rollouts below a threshold, in the browser; a counter says how
  many are shown.
* The page holds whole prompt groups (``rlds-lm inspect --limit`` counts episodes and
  never splits a group) and says how many groups and samples it shows. Groups are in
  ``sort`` order (:data:`SORTS`): by prompt id, by best reward (highest first), by
  teacher-student gap (largest first: the mean over the group's action tokens of
  ``log p_student - log p_teacher``), or as stored.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rlds_lm import schema as S

COLORS = ("auto", "teacher", "reward", "none")
SORTS = ("prompt", "reward", "gap", "storage")  # the keys of _GROUP_ORDER


def episode_gap(episode: Mapping[str, Any]) -> tuple[float, int]:
  """(sum, count) over the action tokens of ``log p_student - log p_teacher``; (0, 0)
  without teacher data. Behaviour log-probs that were not stored read 0."""
  total, count = 0.0, 0
  for step in episode[S.STEPS]:
    teacher = step.get(S.TEACHER) or {}
    teacher_lp = np.asarray(teacher.get(S.TEACHER_TOKEN_LOGPROB, ()), np.float64)
    if step[S.IS_LAST] or not len(teacher_lp):
      continue
    student = np.asarray(step.get(S.ACTION_LOGPROBS, np.zeros(len(teacher_lp))),
                         np.float64)[:len(teacher_lp)]
    total += float((student - teacher_lp[:len(student)]).sum())
    count += len(student)
  return total, count


class GroupKeys:
  """Per prompt group: size, best reward and teacher-student gap, gathered one episode
  at a time; :meth:`choose` picks whole groups for a page."""

  def __init__(self):
    self._groups: dict[str, list[float]] = {}  # prompt id -> [size, best, gap sum, n]

  def add(self, episode: Mapping[str, Any]) -> None:
    prompt_id = _prompt(episode)
    reward = S.episode_return(episode)
    gap, tokens = episode_gap(episode)
    group = self._groups.setdefault(prompt_id, [0, reward, 0.0, 0])
    group[0] += 1
    group[1] = max(group[1], reward)
    group[2] += gap
    group[3] += tokens

  def order(self, sort: str) -> list[str]:
    """Prompt ids in ``sort`` order (ties by prompt id)."""
    if sort not in SORTS:
      raise ValueError(f"sort must be one of {SORTS}, found {sort!r}")
    ids = list(self._groups)  # first-seen order
    key = _GROUP_ORDER[sort]
    return ids if key is None else sorted(ids, key=lambda p: key(p, self._groups[p]))

  def choose(self, limit: int, sort: str) -> list[str]:
    """The first groups in ``sort`` order whose sizes add up to at most ``limit``
    episodes (at least one group): the groups that fit, never a part of one."""
    chosen, total = [], 0
    for prompt_id in self.order(sort):
      size = int(self._groups[prompt_id][0])
      if chosen and total + size > limit:
        break
      chosen.append(prompt_id)
      total += size
    return chosen


# sort -> key of (prompt id, [size, best reward, gap sum, gap tokens]); None: as stored.
_GROUP_ORDER = {
    "prompt": lambda prompt_id, group: prompt_id,
    "reward": lambda prompt_id, group: (-group[1], prompt_id),
    "gap": lambda prompt_id, group: (-group[2] / max(group[3], 1), prompt_id),
    "storage": None,
}


def _prompt(episode: Mapping[str, Any]) -> str:
  value = episode[S.PROMPT_ID]
  return value.decode() if isinstance(value, bytes) else str(value)

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; } h2 { font-size: 1.05em; margin: 0.2em 0; }
.summary { background: #f4f4f4; padding: 0.6em 1em; border-radius: 6px; }
.summary td { padding: 0 1em 0 0; }
.group { border-top: 1px solid #ccc; padding: 0.6em 0; }
.row { display: flex; gap: 0.8em; flex-wrap: wrap; align-items: flex-start; }
.card { border: 1px solid #bbb; border-radius: 6px; padding: 0.4em 0.6em; min-width: 14em;
        max-width: 40em; background: #fff; }
.card.best { border: 2px solid #2a8a2a; }
.card.chosen { border: 2px solid #2a5aa8; }
.meta { font-size: 0.8em; color: #555; }
.prompt { white-space: pre-wrap; font-family: monospace; background: #fafafa; }
.tokens { font-family: monospace; white-space: pre-wrap; line-height: 1.6; }
.tok { border-radius: 2px; }
.legend span { padding: 0 0.4em; }
"""

_SCRIPT = """
function applyFilter() {
  const slider = document.getElementById('min-reward');
  const threshold = parseFloat(slider.value);
  document.getElementById('min-reward-value').textContent = threshold.toFixed(2);
  let shown = 0, total = 0;
  document.querySelectorAll('.card[data-reward]').forEach(card => {
    total += 1;
    const visible = parseFloat(card.dataset.reward) >= threshold;
    card.style.display = visible ? '' : 'none';
    if (visible) shown += 1;
  });
  document.getElementById('shown').textContent = shown + ' of ' + total + ' rollouts shown';
}
window.addEventListener('DOMContentLoaded', () => {
  const slider = document.getElementById('min-reward');
  if (slider) { slider.addEventListener('input', applyFilter); applyFilter(); }
});
"""


def _esc(value: Any) -> str:
  return html.escape(str(value), quote=True)


def _token_piece(tokenizer, token: int) -> str:
  if tokenizer is None:
    return f"⟨{token}⟩"
  for name in ("eos", "bos", "pad"):  # special ids decode to nothing: name them
    if token == getattr(tokenizer, f"{name}_id", None):
      return f"⟨{name}⟩"
  text = tokenizer.decode([token])
  return text if text else f"⟨{token}⟩"


def _shade(value: float, scale: float, positive_green: bool) -> str:
  """A background colour: red for value < 0 (or > 0 with positive_green False)."""
  strength = min(1.0, abs(value) / scale) if scale > 0 else 0.0
  alpha = round(0.75 * strength, 3)
  if alpha == 0:
    return "transparent"
  if positive_green and value > 0:
    return f"rgba(40, 160, 40, {alpha})"
  return f"rgba(220, 40, 40, {alpha})"


def token_colors(step: Mapping[str, Any], color: str, tokenizer=None
                 ) -> tuple[list[str], list[str]]:
  """(CSS background, tooltip) of each action token of a rollout step."""
  tokens = np.asarray(step[S.ACTION][S.ACT_TOKENS])
  student = np.asarray(step.get(S.ACTION_LOGPROBS, np.zeros(len(tokens))), np.float64)
  teacher = step.get(S.TEACHER) or {}
  teacher_lp = np.asarray(teacher.get(S.TEACHER_TOKEN_LOGPROB, []), np.float64)
  top_ids = np.asarray(teacher.get(S.TEACHER_TOPK_IDS, np.zeros((0, 0))))
  rewards = np.asarray(step.get(S.TOKEN_REWARDS, np.zeros(len(tokens))), np.float64)
  backgrounds, tips = [], []
  for i, token in enumerate(tokens):
    tip = [f"id {int(token)}"]
    if i < len(student):
      tip.append(f"student log p {student[i]:.3f}")
    if i < len(teacher_lp):
      tip.append(f"teacher log p {teacher_lp[i]:.3f}")
    if top_ids.ndim == 2 and i < len(top_ids) and top_ids.shape[1]:
      top = int(top_ids[i, 0])
      tip.append(f"teacher top-1 {_token_piece(tokenizer, top)!r} (id {top})")
    if i < len(rewards) and rewards[i]:
      tip.append(f"token reward {rewards[i]:.3f}")
    if color == "teacher" and i < len(teacher_lp):
      gap = student[i] - teacher_lp[i]  # > 0: the teacher finds it less likely
      backgrounds.append(_shade(max(gap, 0.0), 3.0, positive_green=False))
    elif color == "reward" and i < len(rewards):
      backgrounds.append(_shade(rewards[i], max(1e-9, float(np.abs(rewards).max())),
                                positive_green=True))
    else:
      backgrounds.append("transparent")
    tips.append(", ".join(tip))
  return backgrounds, tips


def _tokens_html(step: Mapping[str, Any], tokenizer, color: str) -> str:
  tokens = np.asarray(step[S.ACTION][S.ACT_TOKENS])
  backgrounds, tips = token_colors(step, color, tokenizer)
  spans = [f'<span class="tok" style="background:{bg}" title="{_esc(tip)}">'
           f"{_esc(_token_piece(tokenizer, int(t)))}</span>"
           for t, bg, tip in zip(tokens, backgrounds, tips)]
  return f'<div class="tokens">{"".join(spans)}</div>'


def _observation_text(obs: Mapping[str, Any], tokenizer) -> str:
  text = obs[S.OBS_TEXT]
  if not text and tokenizer is not None:
    text = tokenizer.decode(obs[S.OBS_TOKENS])
  return text


def _rollout_card(episode: Mapping[str, Any], tokenizer, color: str, best: bool) -> str:
  reward = S.episode_return(episode)
  parts = [f'<div class="card{" best" if best else ""}" data-reward="{reward:.6g}" '
           f'data-episode="{_esc(episode[S.EPISODE_ID])}">',
           f'<div class="meta">sample {int(episode[S.SAMPLE_INDEX])} · reward '
           f'{reward:.4g}{" · best of group" if best else ""}'
           f'{" · INVALID" if episode[S.INVALID] else ""}</div>']
  steps = [s for s in episode[S.STEPS] if not s[S.IS_LAST]]
  for i, step in enumerate(steps):
    if i > 0:  # later observations (user / tool turns) of a multi-turn episode
      obs = step[S.OBSERVATION]
      parts.append(f'<div class="prompt">[{_esc(obs[S.OBS_ROLE])}] '
                   f"{_esc(_observation_text(obs, tokenizer))}</div>")
    parts.append(_tokens_html(step, tokenizer, color))
    named = step.get(S.REWARDS) or {}
    if named:
      parts.append('<div class="meta">' + ", ".join(
          f"{_esc(k)} {float(v):.4g}" for k, v in named.items()) + "</div>")
  parts.append("</div>")
  return "".join(parts)


def _preference_html(episode: Mapping[str, Any], tokenizer) -> str:
  first = episode[S.STEPS][0]
  obs, act = first[S.OBSERVATION], first[S.ACTION]
  lengths = np.asarray(obs[S.OBS_CANDIDATE_LENGTHS])
  candidates = (np.split(np.asarray(obs[S.OBS_CANDIDATE_TOKENS]), np.cumsum(lengths)[:-1])
                if len(lengths) else [])
  scores = np.asarray(act[S.ACT_SCORES], np.float64)
  ranking = [int(i) for i in np.asarray(act[S.ACT_RANKING])]
  choice = int(act[S.ACT_CHOICE])
  judge = episode[S.JUDGE]
  cards = []
  for c, tokens in enumerate(candidates):
    text = tokenizer.decode(tokens) if tokenizer is not None else str(tokens.tolist())
    rank = ranking.index(c) + 1 if c in ranking else "-"
    cards.append(f'<div class="card{" chosen" if c == choice else ""}">'
                 f'<div class="meta">candidate {c} · score {scores[c]:.4g} · rank {rank}'
                 f'{" · chosen" if c == choice else ""}</div>'
                 f'<div class="tokens">{_esc(text)}</div></div>')
  return (f'<div class="group preference" data-prompt="{_esc(episode[S.PROMPT_ID])}">'
          f"<h2>prompt {_esc(episode[S.PROMPT_ID])}</h2>"
          f'<div class="meta">judge {_esc(judge[S.JUDGE_NAME])} ({_esc(judge[S.JUDGE_KIND])})'
          f'{" · tie" if choice < 0 else ""}</div>'
          f'<div class="prompt">{_esc(_observation_text(obs, tokenizer))}</div>'
          f'<div class="row">{"".join(cards)}</div></div>')


def render(summary: Mapping[str, Any], episodes: Sequence[Mapping[str, Any]],
           config: S.SchemaConfig, tokenizer=None, *, color: str = "auto",
           title: str = "", sort: str = "prompt") -> str:
  """The page for ``episodes`` (already filtered, whole groups) with the dataset
  ``summary``, groups in ``sort`` order (:data:`SORTS`)."""
  if color not in COLORS:
    raise ValueError(f"color must be one of {COLORS}, found {color!r}")
  keys = GroupKeys()
  for episode in episodes:
    keys.add(episode)
  rank = {prompt_id: i for i, prompt_id in enumerate(keys.order(sort))}
  episodes = sorted(episodes, key=lambda e: rank[_prompt(e)])  # stable: storage order
  groups_shown = len(rank)
  if color == "auto":
    has_token_rewards = any(
        np.any(np.asarray(s.get(S.TOKEN_REWARDS, ())) != 0)
        for e in episodes for s in e[S.STEPS] if config.kind == S.ROLLOUT)
    color = ("teacher" if config.teacher_top_k or config.teacher_sampled_k else
             "reward" if has_token_rewards else "none")
  rows = [("episodes", f"{summary['episodes']} {summary['kind']}"),
          ("steps", summary["steps"]),
          ("tokens", f"{summary['observation_tokens']} observation, "
                     f"{summary['action_tokens']} action"),
          ("schema", f"vocab {config.vocab_size} ({config.tokenizer}), teacher top-k "
                     f"{config.teacher_top_k}, sampled-k {config.teacher_sampled_k}, "
                     f"rewards {', '.join(config.reward_names) or '-'}")]
  for name, stats in summary["rewards"].items():
    if stats:
      rows.append(("reward (primary)" if name == "reward" else f"reward {name}", f"mean {stats['mean']:.4g}, min {stats['min']:.4g}, "
                                     f"max {stats['max']:.4g}"))
  rows.append(("lineage", json.dumps(summary["lineage"], sort_keys=True)))
  head = "".join(f"<tr><td><b>{_esc(k)}</b></td><td>{_esc(v)}</td></tr>" for k, v in rows)
  total_groups = summary.get("prompts", groups_shown)
  counts = (f"{groups_shown} of {total_groups} prompt groups, {len(episodes)} of "
            f"{summary['episodes']} episodes on this page (whole groups; sorted by "
            f"{sort}).")
  body = []
  if config.kind == S.PREFERENCE:
    body = [_preference_html(e, tokenizer) for e in episodes]
  else:
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for episode in episodes:
      groups.setdefault(episode[S.PROMPT_ID], []).append(episode)
    rewards = [S.episode_return(e) for e in episodes] or [0.0]
    low, high = min(rewards), max(rewards)
    step_size = (high - low) / 100 if high > low else 1.0
    legend = {"teacher": "red: the teacher finds the token less likely than the student "
                         "did (darker = larger log-prob gap, saturating at 3 nats)",
              "reward": "green / red: positive / negative per-token reward",
              "none": "no colouring"}[color]
    body.append(
        f'<p class="legend">Token colour: {_esc(legend)}.</p>'
        f'<p><label>minimum reward <input type="range" id="min-reward" min="{low:.6g}" '
        f'max="{high:.6g}" step="{step_size:.6g}" value="{low:.6g}"></label> '
        f'<span id="min-reward-value"></span> · <span id="shown"></span></p>')
    for prompt_id, members in groups.items():
      members = sorted(members, key=lambda e: int(e[S.SAMPLE_INDEX]))
      rewards = [S.episode_return(e) for e in members]
      top = max(rewards)  # every sample with the top reward, unless all tie
      first_obs = members[0][S.STEPS][0][S.OBSERVATION]
      cards = [_rollout_card(e, tokenizer, color, best=(r == top and min(rewards) < top))
               for e, r in zip(members, rewards)]
      body.append(f'<div class="group" data-prompt="{_esc(prompt_id)}">'
                  f"<h2>prompt {_esc(prompt_id)} · {len(members)} sample"
                  f'{"s" if len(members) != 1 else ""}</h2>'
                  f'<div class="prompt">{_esc(_observation_text(first_obs, tokenizer))}</div>'
                  f'<div class="row">{"".join(cards)}</div></div>')
  title = title or f"rlds-lm: {summary['path']}"
  return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
          f"<title>{_esc(title)}</title><style>{_CSS}</style>"
          f"<script>{_SCRIPT}</script></head><body>"
          f"<h1>{_esc(title)}</h1><table class=\"summary\">{head}</table>"
          f'<p class="meta" id="page-counts">{_esc(counts)}</p>'
          + "".join(body) + "</body></html>\n")
