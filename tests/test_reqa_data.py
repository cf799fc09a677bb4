"""ReQA SQuAD data: candidates and gold sets by squad_eval.py's rules, splits, pairs, loading.

`TINY_SQUAD` (also used by the other ReQA tests) holds the traps: an answer in a paragraph's
last sentence, one question with answers in two sentences (and a third answer repeating one of
them), a question text asked in two articles, one sentence text in two paragraphs, abbreviations
sb_sed must not split, a paragraph without questions, a question without answers and a
paragraph repeated verbatim in another article.
"""

import collections
import gzip
import json
import warnings

import numpy as np
import pytest

from retrieval_jax.data import reqa
from retrieval_jax.data import reqa_sb_sed


def _qa(qid, question, context, *answers):
  return {"answers": [{"answer_start": context.index(a), "text": a} for a in answers],
          "question": question, "id": qid}


P0 = ("Dr. Smith founded the Alpha Institute in 1901. It grew quickly. "
      "The institute moved to Boston in 1950.")
P1 = "This paragraph has no questions. Nobody asks about it."
P2 = "The river is long. Beta City lies on its banks. Fishing is common there."
P3 = "The river is long. Beta Lake feeds it."
P4 = "Mr. Jones met Prof. Lee in Jan. 1999 in Gamma. They spoke e.g. about rays."
TINY_SQUAD = {"version": "1.1", "data": [
    {"title": "Alpha", "paragraphs": [
        {"context": P0, "qas": [
            _qa("a0", "Who founded the Alpha Institute?", P0, "Dr. Smith"),
            _qa("a1", "Where did the institute move?", P0, "Boston"),
            _qa("a2", "When was it founded and when did it move?", P0, "1901", "1950", "in 1901"),
        ]},
        {"context": P1, "qas": []},
    ]},
    {"title": "Beta", "paragraphs": [
        {"context": P2, "qas": [_qa("b0", "What is the subject?", P2, "Beta City"),
                                _qa("b1", "What is common there?", P2, "Fishing")]},
        {"context": P3, "qas": [_qa("b2", "How long is the river?", P3, "long"),
                                {"answers": [], "question": "Unanswered?", "id": "b3"}]},
    ]},
    {"title": "Gamma", "paragraphs": [
        {"context": P4, "qas": [_qa("c0", "What is the subject?", P4, "rays"),
                                _qa("c1", "Whom did Mr. Jones meet?", P4, "Prof. Lee")]},
    ]},
    {"title": "Delta", "paragraphs": [
        {"context": P4, "qas": [_qa("d0", "When did they meet?", P4, "1999")]},
    ]},
]}


def script_reference(squad):
  """squad_eval.py's generate_examples + _load_data (minus TensorFlow and encoders).

  Returns (queries as (question, answer sentence), master index as (sentence, context),
  response_index: sentence -> master rows).
  """
  def generate_examples(data):
    count = 0
    for passage in data["data"]:
      for paragraph in passage["paragraphs"]:
        count += 1
        text = paragraph["context"]
        with warnings.catch_warnings():
          warnings.simplefilter("ignore", FutureWarning)
          breaks = list(reqa_sb_sed.infer_sentence_breaks(text))
        sentences = [text[start:end] for start, end in breaks]
        for qas in paragraph["qas"]:
          answer_sentences = set()
          for answer in qas["answers"]:
            sentence = None
            for start, end in breaks:
              if start <= answer["answer_start"] < end:
                sentence = text[start:end]
                break
            if sentence not in answer_sentences:
              answer_sentences.add(str(sentence))
              yield qas["question"], str(sentence), text, sentences

  queries, master, seen = [], [], set()
  for question, answer, document, sentences in generate_examples(squad):
    queries.append((question, answer))
    for sentence in sentences:
      if (sentence, document) not in seen:
        seen.add((sentence, document))
        master.append((sentence, document))
  response_index = collections.defaultdict(list)
  for i, (sentence, _) in enumerate(master):
    response_index[sentence].append(i)
  return queries, master, response_index


def script_gold_by_text(squad):
  """Question text -> the master rows any of its entries counts as a hit (best rank over them)."""
  queries, _, response_index = script_reference(squad)
  gold = collections.defaultdict(set)
  for question, answer in queries:
    gold[question].update(response_index[answer])
  return dict(gold)


def test_candidates_and_gold_follow_the_script():
  data = reqa.ReqaData.from_squad(TINY_SQUAD)
  queries, master, _ = script_reference(TINY_SQUAD)
  assert [(c.sentence, c.context) for c in data.candidates] == master
  assert sum(len(q.answers) for q in data.questions) == len(queries)  # one entry per sentence
  found = data.evaluation_set()
  gold = {text: {int(c) for c in found.qrels[qid]}
          for qid, text in zip(found.query_ids, found.query_texts)}
  assert gold == script_gold_by_text(TINY_SQUAD)
  assert found.candidate_ids == [str(i) for i in range(len(master))]
  assert found.documents[0] == f"{master[0][0]} {master[0][1]}"


def test_the_traps():
  data = reqa.ReqaData.from_squad(TINY_SQUAD)
  sentences = [c.sentence for c in data.candidates]
  # Abbreviations stay inside their sentence; the question-less paragraph adds no candidate.
  assert sentences[0] == "Dr. Smith founded the Alpha Institute in 1901."
  assert "Mr. Jones met Prof. Lee in Jan. 1999 in Gamma." in sentences
  assert not any("no questions" in s for s in sentences)
  # P4 is repeated in Delta: its candidates exist once, in Gamma, but belong to both articles.
  assert len(data.candidates) == 3 + 3 + 2 + 2
  assert data.candidates_of([3]) == data.candidates_of([2]) == [8, 9]
  by_id = {q.id: q for q in data.questions}
  assert "b3" not in by_id  # no answer: no entry
  assert [sentences[c] for c in by_id["a1"].answers] == ["The institute moved to Boston in 1950."]
  assert [sentences[c] for c in by_id["a2"].answers] == [sentences[0], sentences[2]]
  # "The river is long." is gold in both of its paragraphs.
  assert [data.candidates[c].paragraph for c in by_id["b2"].gold] == [2, 3]
  # The repeated question text is one evaluated question, gold from both articles.
  found = data.evaluation_set()
  assert found.query_texts.count("What is the subject?") == 1
  assert len(found.query_ids) == len({q.text for q in data.questions}) == 8
  assert set(found.qrels["b0"]) == {str(by_id["b0"].gold[0]), str(by_id["c0"].gold[0])}


def test_test_pool_and_max_questions():
  data = reqa.ReqaData.from_squad(TINY_SQUAD)
  found = data.evaluation_set([1], candidates="test")
  assert found.candidate_ids == [str(c) for c in range(3, 8)]
  # The text asked in article 2 as well is evaluated with article 1's gold only.
  assert found.qrels["b0"] == {str(data.questions[3].gold[0]): 1}
  some = data.evaluation_set(max_questions=3, seed=1)
  assert len(some.query_ids) == 3 and some == data.evaluation_set(max_questions=3, seed=1)
  assert set(some.query_ids) < set(data.evaluation_set().query_ids)
  with pytest.raises(ValueError, match="candidates='dev'"):
    data.evaluation_set(candidates="dev")
  with pytest.raises(ValueError, match="max_questions"):
    data.evaluation_set(max_questions=0)


def test_splits_are_seeded_by_article_and_nested():
  splits = {f: reqa.split_by_article(442, f, seed=3) for f in (0.01, 0.05, 0.8)}
  for fraction, (train, test) in splits.items():
    assert sorted(train + test) == list(range(442))
    assert len(train) == max(1, round(fraction * 442))
  assert set(splits[0.01][0]) < set(splits[0.05][0]) < set(splits[0.8][0])
  # The 80% split's test articles are held back by every fraction.
  assert all(set(splits[0.8][1]) <= set(test) for _, test in splits.values())
  assert reqa.split_by_article(442, 0.05, seed=3) == splits[0.05]
  assert reqa.split_by_article(442, 0.05, seed=4) != splits[0.05]
  assert reqa.split_by_article(4, 0.01)[0].__len__() == 1  # at least one train article
  for bad in (0.0, 1.0):
    with pytest.raises(ValueError, match="train_fraction"):
      reqa.split_by_article(4, bad)
  with pytest.raises(ValueError, match="no test article"):
    reqa.split_by_article(4, 0.9)


def test_fine_tuning_pairs_come_only_from_train_articles():
  data = reqa.ReqaData.from_squad(TINY_SQUAD)
  pairs = data.fine_tuning_pairs([1])
  assert [p.question_id for p in pairs] == ["b0", "b1", "b2"]
  # b2's answer sentence is also in paragraph 2, but its pair uses its own paragraph.
  assert all(data.candidates[p.candidate].article == 1 for p in pairs)
  assert pairs[2].document == reqa.candidate_text("The river is long.", P3)
  assert len(data.fine_tuning_pairs([0])) == 4  # a2 has two answer sentences


def test_errors_name_the_key_and_the_file(tmp_path):
  broken = json.loads(json.dumps(TINY_SQUAD))
  del broken["data"][1]["paragraphs"][0]["qas"][1]["answers"][0]["answer_start"]
  with pytest.raises(ValueError, match=r"x\.json: data\[1\]\.paragraphs\[0\]\.qas\[1\]\."
                                       r"answers\[0\] has no 'answer_start'"):
    reqa.ReqaData.from_squad(broken, source="x.json")
  outside = json.loads(json.dumps(TINY_SQUAD))
  outside["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] = 10_000
  with pytest.raises(ValueError, match=r"answer_start=10000 is in no sentence"):
    reqa.ReqaData.from_squad(outside)
  bad = tmp_path / "bad.json"
  bad.write_text('{"data": [\n  {"title": }]}')
  with pytest.raises(ValueError, match=r"bad\.json:2: not valid JSON"):
    reqa.load_squad(bad)
  with pytest.raises(FileNotFoundError, match="missing.json does not exist"):
    reqa.load_squad(tmp_path / "missing.json")
  with pytest.raises(FileNotFoundError, match="holds no dev-v1.1.json"):
    reqa.load_squad(tmp_path, "dev")
  with pytest.raises(FileNotFoundError, match="neither a .json"):
    reqa.load_squad("no_such_squad_name")


def test_load_json_gz_and_directory(tmp_path):
  (tmp_path / "dev-v1.1.json").write_text(json.dumps(TINY_SQUAD))
  with gzip.open(tmp_path / "train-v1.1.json.gz", "wt") as f:
    json.dump(TINY_SQUAD, f)
  expected = reqa.ReqaData.from_squad(TINY_SQUAD)
  assert reqa.load_reqa(tmp_path) == expected
  assert reqa.load_reqa(str(tmp_path), "dev") == expected
  assert reqa.load_reqa(tmp_path / "train-v1.1.json.gz") == expected
  assert reqa.squad_file(tmp_path).name == "train-v1.1.json.gz"


def test_load_from_a_bucket(gcs_bucket):
  """gs:// files and directories are read through etils.epath (the GCS emulator)."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  root = epath.Path(gcs_bucket) / "squad"
  (root / "train-v1.1.json.gz").write_bytes(gzip.compress(json.dumps(TINY_SQUAD).encode()))
  (root / "dev-v1.1.json").write_text(json.dumps(TINY_SQUAD))
  expected = reqa.ReqaData.from_squad(TINY_SQUAD)
  assert reqa.load_reqa(str(root)) == expected == reqa.load_reqa(str(root), "dev")
  assert reqa.load_reqa(f"{root}/train-v1.1.json.gz") == expected


def random_squad(seed: int = 0, articles: int = 5, pool_size: int = 12) -> dict:
  """Paragraphs of four sentences drawn from a small pool (so texts repeat across paragraphs),
  three questions each with 1-3 answers, question texts drawn from a few (so they repeat)."""
  rng = np.random.default_rng(seed)
  pool = [f"Fact number {i} holds." for i in range(pool_size)] + ["Dr. Who agrees. It is so."]
  squad = {"data": []}
  for a in range(articles):
    paragraphs = []
    for p in range(3):
      context = " ".join(rng.choice(pool, size=4))
      qas = []
      for q in range(3):
        starts = rng.choice(len(context), size=rng.integers(1, 4))
        # Whitespace between sentences is in no sentence (the script would fail on it).
        qas.append({"id": f"{a}-{p}-{q}", "question": f"Question {rng.integers(2 * articles)}?",
                    "answers": [{"answer_start": int(s), "text": ""} for s in starts
                                if not context[s].isspace()]})
      paragraphs.append({"context": context, "qas": qas})
    squad["data"].append({"title": str(a), "paragraphs": paragraphs})
  return squad


def test_random_squad_matches_the_script():
  squad = random_squad()
  data = reqa.ReqaData.from_squad(squad)
  _, master, _ = script_reference(squad)
  assert [(c.sentence, c.context) for c in data.candidates] == master
  found = data.evaluation_set()
  assert {t: {int(c) for c in found.qrels[i]} for i, t in zip(found.query_ids,
                                                              found.query_texts)} == \
      script_gold_by_text(squad)


def test_real_train_file_counts(tmp_path):
  from tests.conftest import shared_data_dir  # pylint: disable=g-import-not-at-top
  root = shared_data_dir()
  if root is None or not (root / "squad" / "train-v1.1.json.gz").exists():
    pytest.skip("SQuAD not found: set $RETRIEVAL_JAX_DATA or place ../shared/data/squad")
  data = reqa.load_reqa(root / "squad")
  assert (len(data.candidates), len(data.questions), data.num_articles) == (91707, 87599, 442)
  assert len({q.text for q in data.questions}) == 87355
