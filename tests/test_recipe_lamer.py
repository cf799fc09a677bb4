"""LameR and HyDE: the prompts and augmented queries, the evaluator, the recipe end to end."""

import json

import numpy as np
import pytest

from configs import lamer as lamer_config
from retrieval_jax import train
from retrieval_jax.evaluators import lamer as lamer_eval
from retrieval_jax.generation import backend as backend_lib
from retrieval_jax.generation import expansion
from retrieval_jax.recipes import base
from retrieval_jax.recipes import lamer as lamer_recipe_module

DOCS = {"d1": "cats purr and sleep on warm sofas all afternoon",
        "d2": "the stock market fell sharply on monday morning",
        "d3": "volcanoes erupt with molten lava and thick ash",
        "d4": "bread rises when yeast ferments the dough"}
# Each query shares a word with a wrong document only: BM25 alone ranks the right one low.
QUERIES = {"q1": ("what do felines do on monday", "d1"),
           "q2": ("why does the dough market rise", "d4"),
           "q3": ("what comes out of a mountain in the stock photos", "d3")}


@pytest.fixture
def beir_dir(tmp_path):
  root = tmp_path / "tiny_beir"
  (root / "qrels").mkdir(parents=True)
  (root / "corpus.jsonl").write_text("\n".join(
      json.dumps({"_id": d, "title": "", "text": t}) for d, t in DOCS.items()))
  (root / "queries.jsonl").write_text("\n".join(
      json.dumps({"_id": q, "text": t}) for q, (t, _) in QUERIES.items()))
  (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
      f"{q}\t{d}\t1\n" for q, (_, d) in QUERIES.items()))
  return root


class _Oracle:
  """A generator that answers with the relevant document's text (and records its prompts)."""
  model_id = "oracle"

  def __init__(self):
    self.prompts, self.samplings = [], []

  def generate(self, prompts, sampling):
    self.prompts.extend(prompts)
    self.samplings.append(sampling)
    answers = []
    for prompt in prompts:
      text = prompt[0]["content"]
      (qid,) = [q for q, (t, _) in QUERIES.items() if t in text]
      answers.append([DOCS[QUERIES[qid][1]]] * sampling.n)
    return answers


def _entry(beir_dir, **overrides):
  entry = lamer_config.lamer_eval("test", overrides.pop("mode", "lamer"))
  entry.data.name = str(beir_dir)
  entry.data.tfds_dir = str(beir_dir.parent / "tfds")
  entry.depth, entry.candidates, entry.answers = 4, 2, 3
  entry.metrics = ("ndcg@10", "recall@1")
  entry.progress = False
  entry.update(overrides)
  return entry


def test_prompt_and_augmented_query_follow_the_paper():
  prompt = expansion.lamer_prompt("does x cause y", ["one two three", "four five"],
                                  "scientific", max_words=2)
  assert prompt == [{"role": "user", "content": (
      'Give a question "does x" and its possible scientific paper passages (most of these '
      "passages are wrong) enumerated as: \n1. one two \n2. four five\n please write a "
      "correct scientific paper passage.")}]
  answers = ["a1 text", "a2\ntext"]
  assert expansion.augmented_query("q", answers, "interleave") == "q a1 text q a2 text"
  assert expansion.augmented_query("q", answers, "repeat") == "q q a1 text a2 text"
  assert expansion.hyde_prompt("c", "scifact")[0]["content"].endswith("Claim: c\nPassage:")
  with pytest.raises(ValueError, match="augment='sum'"):
    expansion.augmented_query("q", answers, "sum")


def test_lamer_uses_bm25_candidates_and_the_answers(beir_dir, tmp_path):
  oracle = _Oracle()
  evaluator = lamer_eval.build("dev", _entry(beir_dir))
  values = evaluator.run(base.EvalModels(extra={"generator": oracle}), tmp_path / "out")
  print(f"[measured] toy collection: BM25 nDCG@10 {values['bm25/ndcg@10']:.3f}, "
        f"LameR with oracle answers {values['ndcg@10']:.3f}")
  assert values["recall@1"] == 1.0 and values["bm25/recall@1"] < 1.0
  assert values["vs_bm25/ndcg@10"] == pytest.approx(values["ndcg@10"] - values["bm25/ndcg@10"])
  assert oracle.samplings[0].n == 3
  # Each prompt lists BM25's top documents (at most 2; q1 matches 1), in BM25's order.
  bm25_run = {}
  for line in (tmp_path / "out" / "bm25_run.trec").read_text().splitlines():
    qid, _, doc, rank, *_ = line.split()
    bm25_run.setdefault(qid, []).append((int(rank), doc))
  for qid, (text, _) in QUERIES.items():
    prompt = next(p[0]["content"] for p in oracle.prompts if f'"{text}"' in p[0]["content"])
    top = [doc for _, doc in sorted(bm25_run[qid])[:2]]
    listed = " \n".join(f"{i}. {DOCS[doc]}" for i, doc in enumerate(top, start=1))
    assert f"enumerated as: \n{listed}\n please" in prompt, qid
  assert len(bm25_run["q1"]) == 1 and len(bm25_run["q2"]) >= 2
  lines = [json.loads(l) for l in (tmp_path / "out" / "generations.jsonl").read_text().splitlines()]
  assert [l["query_id"] for l in lines] == ["q1", "q2", "q3"]
  assert lines[0]["augmented_query"].startswith(QUERIES["q1"][0] + " " + DOCS["d1"])
  assert json.loads((tmp_path / "out" / "metrics.json").read_text())["ndcg@10"] == 1.0


def test_hyde_averages_the_query_and_passages_and_searches_densely(beir_dir, tmp_path,
                                                                    minilm_dir):
  from retrieval_jax import encode  # pylint: disable=g-import-not-at-top
  encoder = encode.load_encoder(str(minilm_dir))
  evaluator = lamer_eval.build("dev", _entry(beir_dir, mode="hyde"))
  assert evaluator.requires == ("generator", "query")
  oracle = _Oracle()
  values = evaluator.run(base.EvalModels(query=encoder, extra={"generator": oracle}), None)
  assert values["recall@1"] == 1.0
  assert oracle.prompts[0][0]["content"].startswith("Please write a scientific paper passage")
  # q2's search vector, the plain mean of the query's and its 3 (oracle) passages'
  # embeddings, ranks d4 first.
  vectors = encode.encode_texts(encoder, [QUERIES["q2"][0]] + [DOCS["d4"]] * 3,
                                max_length=256, progress=False)
  corpus = encode.encode_texts(encoder, list(DOCS.values()), max_length=256, progress=False)
  assert list(DOCS)[int(np.argmax(corpus @ vectors.mean(axis=0)))] == "d4"


@pytest.mark.parametrize("overrides, message", [
    ({"mode": "rerank"}, r"evals.dev: mode='rerank' is not one of"),
    ({"augment": "sum"}, r"evals.dev: augment='sum'"),
    ({"prompt": "web_search"}, r"evals.dev: prompt='web_search' is not one of .* \(mode lamer\)"),
    ({"answers": 0}, r"evals.dev: answers=0 is below 1"),
    ({"sampling": {"n": 2}}, r"evals.dev: sampling.n: set `answers` instead"),
    ({"sampling": {"temprature": 1.0}}, r"evals.dev: sampling: .*temprature"),
])
def test_bad_entries_name_the_key(beir_dir, overrides, message):
  entry = _entry(beir_dir)
  with entry.unlocked():
    entry.update(overrides)
  with pytest.raises(ValueError, match=message):
    lamer_eval.build("dev", entry)


def test_smoke_config_runs_end_to_end_with_the_in_process_lm(tmp_path):
  config = lamer_config.get_config("smoke")
  config.evals.dev.progress = False
  summary = train.run(config, tmp_path / "run", "eval")
  assert set(summary["eval"]) >= {"dev/ndcg@10", "dev/bm25/ndcg@10", "dev/vs_bm25/ndcg@10"}
  lines = (tmp_path / "run" / "eval" / "dev" / "generations.jsonl").read_text().splitlines()
  first = json.loads(lines[0])
  assert len(first["answers"]) == 2 and first["prompt"][0]["role"] == "user"


def test_configs():
  default = lamer_config.get_config("")
  assert default.generator.backend == "http" and default.evals.dev.candidates == 10
  assert default.evals.dev.answers == 5 and default.evals.dev.augment == "interleave"
  assert (default.evals.dev.bm25.k1, default.evals.dev.bm25.b) == (0.9, 0.4)
  cpu = lamer_config.get_config("cpu")
  assert (cpu.generator.backend, cpu.generator.model) == ("jax", "smollm2")
  hyde = lamer_config.get_config("hyde_cpu")
  assert hyde.evals.dev.mode == "hyde" and hyde.evals.dev.answers == 8
  assert hyde.evals.dev.sampling.temperature == 0.7
  with pytest.raises(ValueError, match="unknown variant 'gpu'"):
    lamer_config.get_config("gpu")


@pytest.mark.parametrize("extra, message", [
    ("{repeat_penalty: 1}", r"generator.extra_body=.* is not JSON"),
    ("[1]", r"generator.extra_body=.* is not a JSON object"),
])
def test_bad_extra_body_names_the_key(extra, message):
  generator = lamer_config.generator_config()
  generator.base_url, generator.extra_body, generator.cache = "http://127.0.0.1:1", extra, "off"
  with pytest.raises(ValueError, match=message):
    lamer_recipe_module.make_generator(generator)


def test_extra_body_goes_into_every_request_and_the_cache_id():
  generator = lamer_config.generator_config()
  generator.base_url, generator.cache = "http://127.0.0.1:1", "off"
  generator.extra_body = '{"repeat_penalty": 1.0}'
  backend = lamer_recipe_module.make_generator(generator)
  _, body = backend._body([{"role": "user", "content": "q"}], backend_lib.Sampling(), 0)
  assert body["repeat_penalty"] == 1.0
  assert backend.model_id.endswith('{"repeat_penalty": 1.0}')
