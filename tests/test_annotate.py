"""``rlds-lm annotate``: people judge groups and write demonstrations, recorded as episodes.

The state machine is tested directly (undo window, overlap, resume, refusals); the whole
app is tested in headless Chromium driven by Playwright, against the real server process,
killed and restarted in the middle.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import requests

from rlds_lm import annotate
from rlds_lm import logs
from rlds_lm import publish as P
from rlds_lm import read
from rlds_lm import recorder as recorder_lib
from rlds_lm import schema as S
from rlds_lm import tokenizers
from rlds_lm import validate as V
from rlds_lm import testing as T

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(n)), None)
HOSTILE = ['<img src=x onerror="window.pwned=1">', "<script>window.pwned=2</script>",
           "</div><b onmouseover=\"window.pwned=3\">x</b>"]


def _publish_groups(data_dir, groups=4, per_group=3, name="groups") -> str:
  tok = tokenizers.ByteTokenizer()
  config = S.SchemaConfig(vocab_size=tok.vocab_size, teacher_top_k=2)
  episodes = []
  for g in range(groups):
    prompt = f"{g} + 2 ="
    prompt_tokens = tok.encode(prompt, add_bos=True)
    for i in range(per_group):
      text = f"{g + 2 + i} {HOSTILE[i % len(HOSTILE)]}"
      action = tok.encode(text)
      n = len(action)
      teacher = {S.TEACHER_TOKEN_LOGPROB: np.full(n, -1.0, np.float32),
                 S.TEACHER_TOPK_IDS: np.tile(np.array([[5, 6]], np.int32), (n, 1)),
                 S.TEACHER_TOPK_LOGPROBS: np.full((n, 2), -1.5, np.float32)}
      turn = S.Turn(S.observation(config, prompt_tokens, prompt, "prompt"), action, text,
                    np.full(n, -0.5, np.float32), teacher=teacher, reward=float(i == 0))
      episodes.append(V.validate_episode(S.rollout_episode(
          config, [turn], prompt_id=f"p-{g}", sample_index=i, seed=i), config))
  return P.publish({"train": episodes}, data_dir=str(data_dir), name=name, config=config)


@pytest.fixture(scope="module")
def groups_dataset(tmp_path_factory):
  return _publish_groups(tmp_path_factory.mktemp("annotate_data"))


class Clock:

  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now


def _judgements(out):
  return [(str(e[S.PROMPT_ID]), int(e[S.STEPS][0][S.ACTION][S.ACT_CHOICE]),
           S.lineage_dict(e)["annotator"])
          for e in logs.read_log(os.path.join(out, annotate.PREFERENCES))]


def test_undo_window_overlap_and_resume(groups_dataset, tmp_path):
  clock = Clock()
  out = str(tmp_path / "out")
  app = annotate.Annotations(groups_dataset, out, overlap=2, undo_window_s=5, clock=clock)
  alice = app.login("alice")
  first = app.next_group(alice)
  assert first["prompt_id"] == "p-0" and first["progress"] == {"done": 0, "remaining": 4}
  assert [c["text"] for c in first["candidates"]][1].endswith(HOSTILE[1])
  app.judge(alice, "p-0", choice=1, flags={"2": {"kind": "unsafe", "reason": "markup"}})
  assert app.next_group(alice)["prompt_id"] == "p-1"
  assert app.undo(alice)["prompt_id"] == "p-0"  # withdrawn: nothing was recorded
  assert app.next_group(alice)["prompt_id"] == "p-0"
  app.judge(alice, "p-0", ranking=[2, 0, 1])
  app.judge(alice, "p-1", tie=True)  # the p-0 judgement is final now
  with pytest.raises(annotate.AnnotationError, match="already judged"):
    app.judge(alice, "p-0", choice=0)
  clock.now += 6  # p-1's undo window passes
  app.next_group(alice)
  with pytest.raises(annotate.AnnotationError, match="nothing to undo"):
    app.undo(alice)
  demo = app.demonstrate(alice, "p-2", 0, "4 is the answer")
  app.close()
  assert _judgements(out) == [("p-0", 2, "alice"), ("p-1", -1, "alice")]
  stored = list(logs.read_log(os.path.join(out, annotate.PREFERENCES)))
  assert stored[0][S.JUDGE][S.JUDGE_KIND] == "human"
  assert S.lineage_dict(stored[0])["ranked"] is True
  demos = list(logs.read_log(os.path.join(out, annotate.DEMONSTRATIONS)))
  assert [d[S.EPISODE_ID] for d in demos] == [demo["episode_id"]]
  assert S.lineage_dict(demos[0])["edited_from"] == str(
      app.by_id["p-2"].episodes[0][S.EPISODE_ID])
  # A restart resumes: alice never sees p-0 or p-1 again; bob (overlap 2) sees them.
  again = annotate.Annotations(groups_dataset, out, overlap=2)
  assert again.next_group(again.login("alice"))["prompt_id"] == "p-2"
  assert again.next_group(again.login("bob"))["prompt_id"] == "p-0"
  again.close()


def test_refusals_are_clear_and_record_nothing(groups_dataset, tmp_path):
  out = str(tmp_path / "out")
  app = annotate.Annotations(groups_dataset, out, overlap=1)
  token = app.login("carol")
  with pytest.raises(annotate.AnnotationError, match="already annotating") as e:
    app.login("carol")
  assert e.value.status == 409
  with pytest.raises(annotate.AnnotationError, match="no group 'p-99'") as e:
    app.judge(token, "p-99", choice=0)
  assert e.value.status == 404
  with pytest.raises(annotate.AnnotationError, match="ranking must order all 3"):
    app.judge(token, "p-0", ranking=[0, 0, 1])
  with pytest.raises(annotate.AnnotationError, match="a flag is one of"):
    app.judge(token, "p-0", choice=0, flags={"1": {"kind": "rude"}})
  with pytest.raises(annotate.AnnotationError, match="unknown or expired session"):
    app.next_group("forged")
  app.close()
  assert _judgements(out) == []
  # No groups: one sample per prompt.
  single = _publish_groups(tmp_path / "single", groups=2, per_group=1, name="single")
  with pytest.raises(annotate.AnnotationError, match="every prompt has one sample"):
    annotate.Annotations(single, str(tmp_path / "o2"))
  # A log directory of another schema.
  other = tmp_path / "other"
  with recorder_lib.Recorder(other / annotate.PREFERENCES,
                             S.SchemaConfig(kind=S.PREFERENCE, vocab_size=300)):
    pass
  with pytest.raises(annotate.AnnotationError, match="another schema"):
    annotate.Annotations(groups_dataset, str(other))


def test_agreement_counts_pairs_of_judges_per_prompt():
  def pref(prompt, judge, kind, choice):
    return {S.PROMPT_ID: prompt, S.JUDGE: {S.JUDGE_NAME: judge, S.JUDGE_KIND: kind},
            S.STEPS: [{S.ACTION: {S.ACT_CHOICE: choice}}]}
  out = annotate.agreement([pref("a", "x", "human", 0), pref("a", "y", "human", 0),
                            pref("a", "rm", "reward_model", 1), pref("b", "x", "human", 2),
                            pref("b", "rm", "reward_model", 2), pref("c", "x", "human", 1)])
  assert out["pairs_compared"] == 4 and out["agreement"] == 0.5
  assert out["by_pair"]["human:x | reward_model:rm"] == {"agree": 1, "compared": 2,
                                                          "rate": 0.5}


def _start(dataset, out, port):
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.Popen(
      [sys.executable, "-m", "rlds_lm.cli", "annotate", dataset, "--out", out, "--port",
       str(port), "--undo_window_s", "1", "--overlap", "2"],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  deadline = time.monotonic() + 120
  while True:
    if proc.poll() is not None:
      pytest.fail(f"rlds-lm annotate exited:\n{proc.stdout.read()[-3000:]}")
    try:
      if requests.get(f"http://127.0.0.1:{port}/", timeout=1).ok:
        return proc
    except requests.ConnectionError:
      pass
    if time.monotonic() > deadline:
      proc.kill()
      pytest.fail("rlds-lm annotate did not answer within 120 s")
    time.sleep(0.3)


def _stop(proc, sig=signal.SIGTERM):
  proc.send_signal(sig)
  try:
    proc.wait(timeout=30)
  except subprocess.TimeoutExpired:
    proc.kill()
    proc.wait()


def _shows(playwright, page, selector, pattern):
  # Playwright's locator assertions, not wait_for_function: the page's Content Security
  # Policy forbids evaluating strings, as it should.
  import re  # pylint: disable=g-import-not-at-top
  playwright.expect(page.locator(selector)).to_have_text(re.compile(pattern),
                                                         timeout=120_000)


def _page(browser, url):
  page = browser.new_context().new_page()
  page.set_default_timeout(120_000)  # a loaded 2-core machine
  page.on("console", lambda m: print("page console:", m.text))
  page.goto(url)
  return page


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on PATH (Debian: apt-get "
                    "install chromium)")
def test_in_a_real_browser_with_a_kill_and_a_second_annotator(groups_dataset, tmp_path):
  playwright = pytest.importorskip("playwright.sync_api")
  out, port = str(tmp_path / "out"), T.free_port()
  url = f"http://127.0.0.1:{port}/"
  server = _start(groups_dataset, out, port)
  try:
    with playwright.sync_playwright() as p:
      browser = p.chromium.launch(executable_path=CHROMIUM, args=[
          "--no-sandbox", "--disable-gpu", "--disable-background-networking",
          "--disable-component-update", "--disable-sync", "--no-first-run"])
      try:
        alice = _page(browser, url)
        alice.fill("#name", "alice")
        alice.keyboard.press("Enter")
        alice.wait_for_selector("#cand2")
        assert "remaining 4" in alice.text_content("#progress")
        # Hostile candidate text is shown as text and never runs.
        for i in range(3):
          assert HOSTILE[i] in alice.text_content(f"#cand{i}")
        assert alice.evaluate("window.pwned") is None
        alice.keyboard.press("1")  # p-0: candidate 1 is best
        _shows(playwright, alice, "#prompt", r"^1 \+")
        alice.keyboard.press("2")  # p-1: candidate 2 ...
        _shows(playwright, alice, "#prompt", r"^2 \+")
        alice.keyboard.press("u")  # ... undone: p-1 comes back
        _shows(playwright, alice, "#prompt", r"^1 \+")
        alice.keyboard.press("r")  # rank mode: 3, 1, 2
        for key in ("3", "1", "2"):
          alice.keyboard.press(key)
        alice.keyboard.press("Enter")
        _shows(playwright, alice, "#prompt", r"^2 \+")
        alice.click("#edit0")  # a demonstration from p-2's first candidate
        alice.fill("#editor0", "4, because 2 + 2 = 4")
        alice.keyboard.press("Control+Enter")
        _shows(playwright, alice, "#message", r"^demonstration saved$")
        alice.select_option("#flag1", "invalid")
        alice.fill("#reason1", "wrong number")
        alice.click("#best2")  # p-2: candidate 3 best, candidate 2 flagged
        _shows(playwright, alice, "#prompt", r"^3 \+")
        assert alice.evaluate("window.pwned") is None
        time.sleep(2.0)  # past the 1 s undo window: p-2's judgement is recorded
        alice.screenshot(path=str(tmp_path / "annotate.png"))
      finally:
        browser.close()
    _stop(server, signal.SIGKILL)  # a crash: nothing in flight
    assert [(p_, c) for p_, c, _ in _judgements(out)] == [("p-0", 0), ("p-1", 2),
                                                          ("p-2", 2)]
    server = _start(groups_dataset, out, port)
    with playwright.sync_playwright() as p:
      browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox",
                                                                  "--disable-gpu"])
      try:
        alice = _page(browser, url)
        alice.fill("#name", "alice")
        alice.keyboard.press("Enter")
        alice.wait_for_selector("#cand0")
        assert alice.text_content("#prompt").startswith("3 +")  # resumed where she was
        bob = _page(browser, url)
        bob.fill("#name", "alice")  # the same name twice at once is refused
        bob.keyboard.press("Enter")
        _shows(playwright, bob, "#message", r"already annotating")
        bob.fill("#name", "bob")
        bob.keyboard.press("Enter")
        bob.wait_for_selector("#cand0")
        assert bob.text_content("#prompt").startswith("0 +")
        bob.keyboard.press("t")  # bob calls p-0 a tie
        _shows(playwright, bob, "#prompt", r"^1 \+")
      finally:
        browser.close()
  finally:
    _stop(server)  # a clean stop records bob's open judgement
  judged = _judgements(out)
  assert judged == [("p-0", 0, "alice"), ("p-1", 2, "alice"), ("p-2", 2, "alice"),
                    ("p-0", -1, "bob")]
  prefs = list(logs.read_log(os.path.join(out, annotate.PREFERENCES)))
  assert json.loads(prefs[2][S.LINEAGE])["flags"] == {"1": {"kind": "invalid",
                                                            "reason": "wrong number"}}
  demos = list(logs.read_log(os.path.join(out, annotate.DEMONSTRATIONS)))
  assert [d[S.STEPS][0][S.ACTION][S.ACT_TEXT] for d in demos] == ["4, because 2 + 2 = 4"]
  # Published like any log, read back like any dataset.
  path = recorder_lib.publish_log(os.path.join(out, annotate.PREFERENCES),
                                  data_dir=str(tmp_path / "published"), name="human_prefs")
  _, records = read.iter_records(path)
  assert sorted(str(read.materialize(r)[S.PROMPT_ID]) for r in records) == [
      "p-0", "p-0", "p-1", "p-2"]
  # inspect reports who judged and how often two judges agreed on the same candidates.
  from rlds_lm import cli  # pylint: disable=g-import-not-at-top
  from rlds_lm import inspect_data  # pylint: disable=g-import-not-at-top
  report = inspect_data.summarize(path)
  assert "agreement: 0.000 over 1 pairs" in inspect_data.format_summary(report)
  assert report["judges"] == {"human:alice": 3, "human:bob": 1}
  assert report["agreement"]["by_pair"] == {
      "human:alice | human:bob": {"agree": 0, "compared": 1, "rate": 0.0}}
  # The TRL preference export takes human judgements as it takes programmatic ones:
  # chosen against each other candidate, ties left out.
  rows_file = tmp_path / "prefs.jsonl"
  assert cli.main(["export", path, "--format", "preference", "--jsonl",
                   str(rows_file)]) == 0
  rows = [json.loads(line) for line in rows_file.read_text().splitlines()]
  assert len(rows) == 3 * 2 and {r["judge"]["kind"] for r in rows} == {"human"}
