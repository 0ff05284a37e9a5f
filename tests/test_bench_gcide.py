"""The GCIDE out-of-domain set of the embedding benchmark (bertjax/bench/gcide.py), on a tiny
dictd database written here: CI machines need not have dict-gcide installed."""
import gzip
import json

import numpy as np

from bertjax.bench import embeddings as bench
from bertjax.bench import gcide

B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

ENTRIES = [
    # Sense 1 is obsolete, then a quotation; sense 2 is the query. The etymology spans lines.
    ("Abandon", 'Abandon \\A*ban"don\\, v. t. [imp. & p. p.\n   {Abandoned}.] [OF. abandoner.]\n'
     "   1. To cast or drive out; to banish. [Obs.]\n      [1913 Webster]\n\n"
     "            That he might . . . abandon them. --Udall.\n      [1913 Webster]\n\n"
     "   2. To give up absolutely; to forsake entirely; as, to abandon a hope.\n"
     "      [1913 Webster]\n"),
    # Listed in the index under its inflection only: the headword is read from the entry.
    ("Happier", 'Happy \\Hap"py\\ (h[a^]p"p[y^]), a. [Compar. {Happier}.] [From {Hap}.]\n'
     "   Favored by hap, luck, or fortune; lucky.\n   [1913 Webster]\n"),
    # A sense GCIDE took from WordNet would match WordNet by construction: skipped.
    ("Quickly", 'Quickly \\Quick"ly\\, adv.\n   with speed; rapidly and soon.\n   [WordNet 1.5]\n'),
    ("Slowly", 'Slowly \\Slow"ly\\, adv.\n   In a slow manner; not quickly; gradually.\n'
     "   [Webster 1913 Suppl.]\n"),
    # Nouns are never evaluation queries.
    ("Dog", "Dog \\Dog\\, n.\n   A quadruped of the genus Canis.\n   [1913 Webster]\n"),
    # A word with more WordNet senses than max_senses.
    ("Run", "Run \\Run\\, v. i.\n   To move swiftly on the legs.\n   [1913 Webster]\n"),
]


def write_dictd(root, entries=ENTRIES, name="gcide"):
    def number(n):
        digits = ""
        while True:
            digits = B64[n % 64] + digits
            n //= 64
            if not n:
                return digits
    data, index = b"00-database-info\n", ["00-database-info\tA\tR"]
    for word, text in entries:
        raw = text.encode()
        index.append(f"{word}\t{number(len(data))}\t{number(len(raw))}")
        data += raw
    (root / f"{name}.index").write_text("\n".join(index) + "\n")
    with gzip.open(root / f"{name}.dict.dz", "wb") as f:
        f.write(data)
    return data


def write_wordnet(root):
    files = {
        "data.verb": ["00001 29 v 02 abandon 0 give_up 0 000 | forsake, leave behind; "
                      '"we abandoned the old car in the empty parking lot"',
                      "00002 29 v 01 abandon 1 000 | stop maintaining or insisting on; "
                      '"He abandoned the thought of asking for her hand"',
                      *[f"0001{i} 38 v 01 run {i} 000 | sense {i} of running fast; "
                        f'"they run every single day {i}"' for i in range(4)]],
        "data.adj": ["00003 00 a 02 happy 0 felicitous 0 000 | enjoying well-being and "
                     'contentment; "a happy smile on her face"',
                     "00004 00 s 01 happy(p) 0 000 | eagerly disposed to act or to be of "
                     'service; "glad to help out today"'],
        "data.adv": ["00005 02 r 01 slowly 0 000 | without speed; "
                     '"he spoke slowly and clearly"',
                     "00006 02 r 01 quickly 0 000 | with rapid movements; "
                     '"he works quickly and well"'],
        "data.noun": [f"1000{i} 05 n 01 dog{i} 0 000 | a member of the genus Canis number {i}; "
                      f'"the dog barked all night long {i}"' for i in range(6)],
    }
    for name, lines in files.items():
        (root / name).write_text("  1 This software and database is provided\n"
                                 + "\n".join(lines) + "\n")


def test_dictd_index_numbers_and_dict_read_back(tmp_path):
    assert [gcide.dictd_number(s) for s in ("A", "B", "/", "BA", "5I")] == [0, 1, 63, 64, 3656]
    data = write_dictd(tmp_path)
    index = gcide.read_index(str(tmp_path / "gcide.index"))
    assert [w for w, _, _ in index][:3] == ["00-database-info", "Abandon", "Happier"]
    assert gcide.read_dict(str(tmp_path / "gcide.dict.dz")) == data
    texts = gcide.entries(str(tmp_path / "gcide.index"), str(tmp_path / "gcide.dict.dz"))
    assert texts == [t for _, t in ENTRIES]


def test_webster_definitions_follow_the_rule(tmp_path):
    write_dictd(tmp_path)
    texts = gcide.entries(str(tmp_path / "gcide.index"), str(tmp_path / "gcide.dict.dz"))
    got = gcide.webster_definitions(texts)
    assert got == {
        ("abandon", "verb"): "To give up absolutely; to forsake entirely",
        ("happy", "adj"): "Favored by hap, luck, or fortune; lucky.",
        ("slowly", "adv"): "In a slow manner; not quickly; gradually.",
        ("run", "verb"): "To move swiftly on the legs.",
    }
    assert gcide.entry_pos("v. i.") == "verb" and gcide.entry_pos("p. a.") == "adj"
    assert gcide.entry_pos("n.") is None


def test_gcide_queries_retrieve_every_wordnet_sense_of_the_word(tmp_path):
    write_dictd(tmp_path)
    write_wordnet(tmp_path)
    got = gcide.build_gcide(str(tmp_path / "out"), str(tmp_path), str(tmp_path), 10)
    # run has 4 verb synsets > max_senses 3; quickly's only GCIDE sense is WordNet's own.
    assert sorted(got["query_words"]) == [("abandon", "verb"), ("happy", "adj"),
                                         ("slowly", "adv")]
    relevant = {k: sorted(got["doc_ids"][i] for i in q)
                for k, q in zip(got["query_words"], got["qrels"])}
    assert relevant == {("abandon", "verb"): ["verb-00001", "verb-00002"],
                        ("happy", "adj"): ["adj-00003", "adj-00004"],
                        ("slowly", "adv"): ["adv-00005"]}
    assert got["doc_ids"] == ["adj-00003", "adj-00004", "adv-00005", "verb-00001", "verb-00002"]
    assert all(g == 1.0 for q in got["qrels"] for g in q.values())
    beir = tmp_path / "out" / "gcide-beir"
    corpus = [json.loads(x) for x in (beir / "corpus.jsonl").read_text().splitlines()]
    assert corpus[0] == {"_id": "adj-00003", "title": "",
                         "text": "enjoying well-being and contentment"}
    qrels = (beir / "qrels" / "test.tsv").read_text().splitlines()
    assert qrels[0] == "query-id\tcorpus-id\tscore" and len(qrels) == 1 + 5
    assert "g-verb-abandon\tverb-00002\t1" in qrels


def test_no_evaluation_synset_reaches_training(tmp_path):
    write_dictd(tmp_path)
    write_wordnet(tmp_path)
    wn = bench.build_wordnet(str(tmp_path / "out"), str(tmp_path), 3, 6)
    got = gcide.build_gcide(str(tmp_path / "out"), str(tmp_path), str(tmp_path), 10,
                            exclude=set(wn["train_ids"]))
    train_texts = {json.loads(x)["positive"]
                   for name in ("train.jsonl", "dev.jsonl")
                   for x in (tmp_path / "out" / name).read_text().splitlines()}
    assert wn["train_ids"] and all(s.startswith("noun-") for s in wn["train_ids"])
    assert not set(got["doc_ids"]) & set(wn["train_ids"])
    assert not set(wn["eval_ids"]) & set(wn["train_ids"])
    assert not set(got["docs"]) & train_texts
    assert {s.split("-")[0] for s in got["doc_ids"]} <= {"verb", "adj", "adv"}
    # The exclusion is enforced, not a coincidence of parts of speech.
    fewer = gcide.build_gcide(str(tmp_path / "out2"), str(tmp_path), str(tmp_path), 10,
                              exclude={"verb-00002"})
    assert "verb-00002" not in fewer["doc_ids"] and "verb-00001" in fewer["doc_ids"]


def test_a_missing_gcide_is_named_not_scored_zero(tmp_path):
    absent = gcide.gcide_files(str(tmp_path))
    assert isinstance(absent, str) and absent.startswith("absent:") and "dict-gcide" in absent
    write_dictd(tmp_path)
    write_wordnet(tmp_path)
    wn = bench.build_wordnet(str(tmp_path / "out"), str(tmp_path), 3, 6)
    g = gcide.build_gcide(str(tmp_path / "out"), str(tmp_path), str(tmp_path), 10)
    lee = (["a cat sat", "dogs bark loudly", "a cat slept"], [],
           np.array([[1, .2, .9], [.2, 1, .1], [.9, .1, 1]]))
    tfidf = bench.TfIdf(wn["docs"] + wn["queries"] + g["queries"] + g["docs"] + lee[0])
    embed = lambda texts, _p: tfidf(texts)  # noqa: E731
    without = bench.score_arm("tf-idf", embed, wn, lee, absent)
    assert without["gcide"] == absent and "gcide_ndcg@10" not in without
    scored = bench.score_arm("tf-idf", embed, wn, lee, g)
    assert "gcide" not in scored and 0 < scored["gcide_mrr@10"] <= 1
    assert 0 < scored["gcide_ndcg@10"] <= 1
