"""benchmarks.repro_rlef: its per-claim verdicts and summary statistics, on known numbers
(no training: the script's own run is the experiment)."""

from __future__ import annotations

import dataclasses
import json

from benchmarks import repro_rlef as R

DOCUMENT = ("Ada Costa is a resident of Marlow. Ada Costa works at Helix Biotech. "
            "Shares of Granite Bank moved little on Tuesday.")
FACTS = ["Ada Costa|lives_in|Marlow", "Ada Costa|works_at|Helix Biotech"]


def _eval(oracle, nli, kl, length=80.0, extractive=0.1, se=0.02):
  return {"oracle": oracle, "oracle_se": se, "nli": nli, "nli_se": se,
          "gap": nli - oracle, "gap_se": se, "kl": kl, "kl_se": 0.1, "length": length,
          "length_se": 1.0, "extractive": extractive, "extractive_se": 0.01,
          "hallucinates": 0.3, "unsupported": 0.1, "unparsed": 0.2, "sentences": 3.0,
          "eos": 0.9, "examples": [" Ada Costa lives in Marlow."]}


def _run(reward, kl_coef, final, nli_slope=0.0, oracle_slope=0.0):
  curve = [{"step": s, "oracle": 0.4 + oracle_slope * s / 100,
            "nli": 0.5 + nli_slope * s / 100, "kl": 0.01, "kl_sequence": 1.0, "length": 80.0, "reward": 0.5, "eos": 0.9}
           for s in range(1, 101)]
  return {"reward": reward, "kl_coef": kl_coef, "final": final, "curve": curve,
          "seconds": 1.0}


def _data(runs, start=None):
  return {"start": start or _eval(0.45, 0.55, 0.0),
          "reference_summaries": {"oracle": 0.85, "hallucinates": 0.4, "nli": 0.76,
                                  "length": 110.0, "extractive": 0.35,
                                  "summaries": 100},
          "runs": runs}


def test_claims_follow_the_numbers_when_rlef_works_and_games_the_scorer():
  runs = [_run("nli", 0.01, _eval(0.55, 0.85, 6.0, length=60.0), nli_slope=0.3,
               oracle_slope=0.05),
          _run("nli", 0.1, _eval(0.60, 0.70, 1.0)),
          _run("oracle", 0.01, _eval(0.75, 0.70, 4.0))]
  claims = R.claims(_data(runs))
  assert [c["reproduced"] for c in claims] == [True] * 6
  for claim in claims:  # every line is the JSON the docs promise
    assert set(claim) >= {"claim", "measured", "reproduced"}
    json.dumps(claim)
  assert claims[3]["slope_nli"] > claims[3]["slope_oracle"]


def test_claims_are_not_reproduced_by_noise_or_a_flat_policy():
  start = _eval(0.10, 0.20, 0.0)  # outside the premise's 30-70 %
  runs = [_run("nli", 0.01, _eval(0.11, 0.21, 0.5)),  # within two standard errors
          _run("nli", 0.1, _eval(0.12, 0.22, 0.8)),  # more KL at the larger kl_coef
          _run("oracle", 0.01, _eval(0.10, 0.20, 0.4))]
  assert [c["reproduced"] for c in R.claims(_data(runs, start))] == [False] * 6


def test_summary_stats_count_unsupported_unparsed_and_copied_sentences():
  text = ("Ada Costa is a resident of Marlow. Ada Costa works at Granite Bank. "
          "Shares of Granite Bank moved little on Tuesday.")
  stats = R.summary_stats(DOCUMENT, FACTS, text)
  assert stats["sentences"] == 3
  assert stats["unsupported"] == stats["unparsed"] == 1 / 3  # wrong employer; distractor
  assert stats["extractive"] == 2 / 3  # the first and the last are copied verbatim
  assert stats["hallucinates"] == 1.0
  assert R.summary_stats(DOCUMENT, FACTS, "")["sentences"] == 0


def test_report_states_every_claim_and_plots(tmp_path):
  runs = [_run("nli", 0.01, _eval(0.55, 0.85, 6.0, length=60.0), nli_slope=0.3),
          _run("nli", 0.1, _eval(0.60, 0.70, 1.0)),
          _run("oracle", 0.01, _eval(0.75, 0.70, 4.0))]
  data = _data(runs)
  data.update(benchmark=R.NAME, quick=True, eval_split="validation",
              sizes=dataclasses.asdict(R.QUICK),
              data={"train_documents": 16, "validation_documents": 2, "test_documents": 2,
                    "eval_documents": 2, "sft_episodes": 30, "longest_sft_tokens": 300,
                    "context": 384},
              policy={"params": 1000}, nli={"train_pairs": 200, "steps": 20,
                                           "test_accuracy": 0.9},
              scorer_blind_spots={"fact": 0.9, "extrinsic": 0.1, "copied_distractor": 0.8},
              sft={"seconds": 1.0}, machine={})
  data["claims"] = R.claims(data)
  text = R.markdown(data)
  for claim in data["claims"]:
    assert claim["claim"] in text
  assert "**reproduced**" in text
  R.plot(data, str(tmp_path / "p.png"))
  assert (tmp_path / "p.png").stat().st_size > 0
