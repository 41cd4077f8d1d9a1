"""``rlds-lm inspect``: filters, and the HTML viewer rendered by a real (headless) Chromium."""

from __future__ import annotations

import html.parser
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import PREFERENCE, ROLLOUT, preferences, rollouts
from rlds_lm import publish as P
from rlds_lm import schema as S
from rlds_lm import validate as V

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(n)), None)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium on PATH (Debian: apt-get install chromium)")


def _cli(*args):
  result = subprocess.run([sys.executable, "-m", "rlds_lm.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


def _chromium(*args, timeout=120):
  result = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                           "--hide-scrollbars", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


class _Dom(html.parser.HTMLParser):
  """Elements by class, with their attributes and text (of the DOM Chromium dumped)."""

  def __init__(self):
    super().__init__()
    self.elements, self._open = [], []

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    element = {"tag": tag, "classes": set((attrs.get("class") or "").split()),
               "attrs": attrs, "text": ""}
    self.elements.append(element)
    if tag not in ("input", "br", "meta"):
      self._open.append(element)

  def handle_endtag(self, tag):
    if self._open:
      self._open.pop()

  def handle_data(self, data):
    for element in self._open:
      element["text"] += data

  def find(self, cls):
    return [e for e in self.elements if cls in e["classes"]]

  def by_id(self, ident):
    return next(e for e in self.elements if e["attrs"].get("id") == ident)


def _rendered(dataset, page):
  """``rlds-lm inspect DATASET --html PAGE``, then the DOM Chromium builds from it."""
  _cli("inspect", dataset, "--html", page, "--show", 0)
  dom = _Dom()
  dom.feed(_chromium("--dump-dom", page.as_uri()))
  return page, dom


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
  root = tmp_path_factory.mktemp("viewer")
  rollout_episodes = [V.validate_episode(e, ROLLOUT) for e in rollouts(12)]
  return {
      "rollouts": P.publish({"train": rollout_episodes}, data_dir=root, name="r",
                            config=ROLLOUT),
      "preferences": P.publish({"train": preferences(6)}, data_dir=root, name="p",
                               config=PREFERENCE),
      "episodes": rollout_episodes,
      "preference_episodes": preferences(6),
  }


def _reward(episode):
  return sum(float(s[S.REWARD]) for s in episode[S.STEPS] if not s[S.IS_LAST])


def test_inspect_filters_by_reward_and_prompt(datasets):
  episodes = datasets["episodes"]
  threshold = float(np.median([_reward(e) for e in episodes]))
  expected = sum(_reward(e) >= threshold for e in episodes)
  out = _cli("inspect", datasets["rollouts"], "--min_reward", threshold, "--show", 0)
  assert f"{expected} rollout episodes (of 12; filter" in out
  out = _cli("inspect", datasets["rollouts"], "--max_reward", threshold, "--show", 0)
  expected = sum(_reward(e) <= threshold for e in episodes)
  assert f"{expected} rollout episodes (of 12; filter" in out
  out = _cli("inspect", datasets["rollouts"], "--prompt_id", "prompt-1", "--show", 4)
  assert "4 rollout episodes (of 12" in out and "prompts: 1," in out
  assert out.count("prompt prompt-1") == 4
  assert "p10" in out and "median" in out


@needs_chromium
def test_the_viewer_page_renders_groups_tokens_and_colours(datasets, tmp_path):
  page, dom = _rendered(datasets["rollouts"], tmp_path / "view.html")
  episodes = datasets["episodes"]
  # The page's script ran in the browser: it counted the rollouts it shows.
  assert dom.by_id("shown")["text"] == "12 of 12 rollouts shown"
  groups = [g for g in dom.find("group")]
  by_prompt = {}
  for episode in episodes:
    by_prompt.setdefault(episode[S.PROMPT_ID], []).append(episode)
  assert sorted(g["attrs"]["data-prompt"] for g in groups) == sorted(by_prompt)
  # Best-of-N: one card per sample, the best reward of each group marked.
  cards = dom.find("card")
  assert len(cards) == 12
  best = {c["attrs"]["data-episode"] for c in dom.find("best")}
  expected = set()
  for group in by_prompt.values():
    rewards = [_reward(e) for e in group]
    if min(rewards) < max(rewards):
      expected |= {e[S.EPISODE_ID] for e, r in zip(group, rewards) if r == max(rewards)}
  assert best == expected and len(best) >= len(by_prompt) - 1
  # One span per action token; coloured where the teacher finds the token less likely
  # than the student did (behaviour log-prob above the teacher's).
  spans = dom.find("tok")
  steps = [s for e in episodes for s in e[S.STEPS] if not s[S.IS_LAST]]
  assert len(spans) == sum(len(s[S.ACTION][S.ACT_TOKENS]) for s in steps)
  gaps = np.concatenate([np.asarray(s[S.ACTION_LOGPROBS]) -
                         np.asarray(s[S.TEACHER][S.TEACHER_TOKEN_LOGPROB]) for s in steps])
  coloured = ["transparent" not in span["attrs"]["style"] for span in spans]
  assert sum(coloured) == int((gaps > 0).sum()) > 0

  shot = tmp_path / "view.png"
  _chromium(f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri())
  from PIL import Image  # pylint: disable=g-import-not-at-top
  image = np.asarray(Image.open(shot).convert("RGB")).astype(int)
  assert image.shape == (1600, 1200, 3)
  red = (image[..., 0] > 200) & (image[..., 1] < 190) & (image[..., 2] < 190)
  assert red.sum() > 50  # coloured tokens are on screen
  assert (image.std(axis=(0, 1)) > 10).all()  # not a blank page


@needs_chromium
def test_the_viewer_shows_preference_judgements(datasets, tmp_path):
  _, dom = _rendered(datasets["preferences"], tmp_path / "prefs.html")
  groups = dom.find("preference")
  assert len(groups) == len(datasets["preference_episodes"])
  chosen = dom.find("chosen")
  assert len(chosen) == sum(int(e[S.STEPS][0][S.ACTION][S.ACT_CHOICE]) >= 0
                            for e in datasets["preference_episodes"])
  for card in chosen:
    assert "· chosen" in card["text"] and "rank 1" in card["text"]


def test_the_viewer_escapes_what_it_shows():
  from rlds_lm import testing as T  # pylint: disable=g-import-not-at-top
  from rlds_lm import tokenizers  # pylint: disable=g-import-not-at-top
  from rlds_lm import viewer  # pylint: disable=g-import-not-at-top
  episode = T.fake_rollout(ROLLOUT, seed=0)
  episode[S.STEPS][0][S.OBSERVATION][S.OBS_TEXT] = "<script>alert(1)</script>"
  episode[S.PROMPT_ID] = 'p"><img src=x onerror=alert(2)>'
  summary = {"path": "<x>", "episodes": 1, "kind": S.ROLLOUT, "steps": 2,
             "observation_tokens": 6, "action_tokens": 8, "rewards": {}, "lineage": {}}
  page = viewer.render(summary, [episode], ROLLOUT, tokenizers.ByteTokenizer())
  assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
  assert "<img" not in page and 'data-prompt="p&quot;&gt;&lt;img' in page


@pytest.fixture(scope="module")
def interleaved(tmp_path_factory):
  """6 prompts x 4 samples, published: storage order (by key hash) interleaves groups."""
  from rlds_lm import read as R  # pylint: disable=g-import-not-at-top
  from rlds_lm import testing as T  # pylint: disable=g-import-not-at-top
  episodes = [V.validate_episode(T.fake_rollout(ROLLOUT, seed=i), ROLLOUT) for i in range(24)]
  path = P.publish({"train": episodes}, data_dir=tmp_path_factory.mktemp("groups"),
                   name="groups", config=ROLLOUT)
  _, records = R.iter_records(path, "train")
  stored = [R.materialize(r)[S.PROMPT_ID] for r in records]
  first = stored[:10]
  assert any(first.count(p) not in (0, 4) for p in set(stored)), stored  # a split group
  groups = {}
  for episode in episodes:
    groups.setdefault(episode[S.PROMPT_ID], []).append(episode)
  return path, groups


def _page(path, page, *args):
  out = _cli("inspect", path, "--html", page, "--show", 0, *args)
  dom = _Dom()
  dom.feed(page.read_text())
  return out, dom


def _gap(group):
  gaps = [np.asarray(s[S.ACTION_LOGPROBS], np.float64) -
          np.asarray(s[S.TEACHER][S.TEACHER_TOKEN_LOGPROB], np.float64)
          for e in group for s in e[S.STEPS] if not s[S.IS_LAST]]
  return float(np.concatenate(gaps).mean())


@pytest.mark.parametrize("sort", ["prompt", "reward", "gap"])
def test_the_viewer_page_takes_whole_groups_in_sort_order(interleaved, tmp_path, sort):
  path, groups = interleaved
  key = {"prompt": lambda p: p,
         "reward": lambda p: -max(_reward(e) for e in groups[p]),
         "gap": lambda p: -_gap(groups[p])}[sort]
  expected = sorted(groups, key=key)[:2]  # 10 episodes at most: two groups of 4
  out, dom = _page(path, tmp_path / f"{sort}.html", "--limit", 10, "--sort", sort)
  assert "(2 of 6 prompt groups, 8 of 24 episodes)" in out
  assert dom.by_id("page-counts")["text"].startswith(
      "2 of 6 prompt groups, 8 of 24 episodes on this page")
  shown = dom.find("group")
  assert [g["attrs"]["data-prompt"] for g in shown] == expected
  for group in shown:
    members = {e[S.EPISODE_ID] for e in groups[group["attrs"]["data-prompt"]]}
    assert "4 samples" in group["text"]
    cards = [c for c in dom.find("card") if c["attrs"]["data-episode"] in members]
    assert len(cards) == 4
  assert len(dom.find("card")) == 8


def test_a_group_larger_than_the_limit_is_shown_whole_and_alone(interleaved, tmp_path):
  path, groups = interleaved
  out, dom = _page(path, tmp_path / "one.html", "--limit", 3)
  assert "(1 of 6 prompt groups, 4 of 24 episodes)" in out
  assert [g["attrs"]["data-prompt"] for g in dom.find("group")] == [sorted(groups)[0]]
