"""Real-data task adapters (tasks/dolly.py ... tasks/boolq.py, kdbench/realdata.py).

Small fixtures written here cover every upstream and processed layout and the malformed-input
errors; the last section runs on the real files in ../shared/data and skips when absent.
Nothing here touches the network: the hub is switched off, and the one hub test uses a fake.
"""
from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import pytest

os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

from kdbench.errors import ConfigError, DataError  # noqa: E402
from kdbench.readers import parse_bucket, read_jsonl, read_tsv, render_prompt  # noqa: E402
from kdbench.realdata import RealTask  # noqa: E402
from kdbench.task import TASKS, TaskOptions  # noqa: E402

NAMES = ("dolly", "self_inst", "vicuna", "sni", "unni", "sst2", "boolq")
for _n in NAMES:
    importlib.import_module(f"tasks.{_n}")

from fixtures import SHARED_DATA as SHARED  # noqa: E402  (../shared/data, or $KDBENCH_SHARED_DATA)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("KDBENCH_DATA", raising=False)


def make(name, root=None, **kw):
    extra = kw.pop("extra", {})
    return TASKS.get(name)(TaskOptions(data_dir=str(root) if root else None, extra=extra, **kw))


def write_jsonl(path: Path, records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def rec(i, inp="", output=None, prompt=True, **extra):
    r = {"instruction": f"Do thing {i}.", "input": inp, "output": f"answer {i}" if output is None else output}
    if prompt:
        r["prompt"] = render_prompt(r["instruction"], inp)
    r.update(extra)
    return r


# -- template ------------------------------------------------------------------------------------

def test_render_prompt_exact_text():
    assert render_prompt("Say hi.") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nSay hi.\n\n### Response:\n")
    assert render_prompt("Sum {a}.", "1 2") == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n### Instruction:\nSum {a}.\n\n"
        "### Input:\n1 2\n\n### Response:\n")


def test_every_adapter_is_registered_and_described():
    for n in NAMES:
        cls = TASKS.get(n)
        assert issubclass(cls, RealTask) and cls.name == n
        assert isinstance(cls.version, int) and cls.description and "\n" not in cls.description
        assert cls.__doc__ and "Hub fallback" in cls.__doc__
        # the metrics MiniLLM reports on each set (Table 1, §3.4 of reference/minillm.md, Figure 6)
        expected = {"sst2": ("ece",), "boolq": ("ece",),
                    "dolly": ("rouge_l", "judge", "dist4", "lm_loss", "exposure_bias"),
                    "self_inst": ("rouge_l", "judge", "dist4", "lm_loss"),
                    "vicuna": ("rouge_l", "judge")}.get(n, ("rouge_l",))
        assert cls.default_metrics == expected
        # LMOps evaluates its five instruction sets with no_repeat_ngram_size 6; classification: off
        assert cls.no_repeat_ngram_size == (0 if n in ("sst2", "boolq") else 6)
        assert cls.splits == (("train", "dev", "test") if n == "dolly" else ("test",))


# -- Dolly ---------------------------------------------------------------------------------------

def test_dolly_processed_test_and_dev_only_fallback(tmp_path):
    d = tmp_path / "dolly" / "minillm"
    write_jsonl(d / "valid.jsonl", [rec(i, "ctx" if i % 2 else "", topic="open_qa") for i in range(5)])
    # dev.jsonl: 120 records, one of which repeats a test (instruction, input) pair
    write_jsonl(d / "dev.jsonl", [rec(100 + i) for i in range(119)] + [rec(0)])
    t = make("dolly", tmp_path)
    test = t.examples("test")
    assert len(test) == 5 and test[1].input == "ctx" and test[1].meta["topic"] == "open_qa"
    assert test[0].references == ["answer 0"] and test[0].prompt == render_prompt("Do thing 0.", "")
    train, dev = t.examples("train"), t.examples("dev")
    assert len(train) == 19 and len(dev) == 100  # 119 after removing the overlap; last 100 are dev
    assert dev[-1].instruction == "Do thing 218." and train[0].instruction == "Do thing 100."
    assert t.describe_load("train")["dropped"] == {"overlaps_test": 1}
    assert "fallback" in t.describe_load("dev")["notes"]["split_rule"]
    assert len({e.id for e in train + dev + test}) == 124


def test_dolly_full_pool_processed_raw(tmp_path):
    d = tmp_path / "dolly"
    write_jsonl(d / "valid.jsonl", [rec(0)])
    write_jsonl(d / "raw.jsonl", [rec(i) for i in range(1, 8)] + [rec(0)])
    t = make("dolly", tmp_path, extra={"dev_num": 3})
    assert [e.instruction for e in t.examples("dev")] == [f"Do thing {i}." for i in (1, 2, 3)]
    assert [e.instruction for e in t.examples("train")] == [f"Do thing {i}." for i in (4, 5, 6, 7)]
    assert t.describe_load("train")["source"] == str(d / "raw.jsonl")


def test_dolly_upstream_15k_file(tmp_path):
    d = tmp_path / "dolly"
    write_jsonl(d / "minillm" / "valid.jsonl", [rec(2, "c2")])
    up = [{"instruction": f"Do thing {i}.", "context": f"c{i}" if i % 2 == 0 else "", "response": f"r{i}",
           "category": "closed_qa"} for i in range(6)]
    write_jsonl(d / "databricks-dolly-15k.jsonl", up)
    t = make("dolly", tmp_path, extra={"dev_num": 2})
    dev, train = t.examples("dev"), t.examples("train")
    assert [e.references[0] for e in dev] == ["r0", "r1"]
    assert [e.references[0] for e in train] == ["r3", "r4", "r5"]  # r2 is the test record
    assert dev[0].input == "c0" and dev[0].prompt == render_prompt("Do thing 0.", "c0")
    assert dev[0].meta["topic"] == "closed_qa"


def test_dolly_train_dev_pair_and_missing_test(tmp_path):
    d = tmp_path / "dolly"
    write_jsonl(d / "train.jsonl", [rec(i) for i in range(4)])
    write_jsonl(d / "dev.jsonl", [rec(i) for i in range(10, 12)])
    t = make("dolly", tmp_path)
    assert len(t.examples("train")) == 4 and len(t.examples("dev")) == 2
    assert t.describe_load("train")["notes"]["overlap_check"].startswith("skipped")
    with pytest.raises(DataError, match="valid.jsonl"):
        t.examples("test")


def test_processed_prompt_rules(tmp_path):
    d = tmp_path / "self_inst"
    rows = [rec(0, "a"), rec(1, prompt=False),
            dict(rec(2, "x\ny"), prompt=render_prompt("Do thing 2.", "x\ny").replace("\n", "<n>")),
            dict(rec(3), prompt="custom wrapper")]
    write_jsonl(d / "valid.jsonl", rows)
    t = make("self_inst", tmp_path)
    ex = t.examples("test")
    assert ex[1].prompt == render_prompt("Do thing 1.", "")  # no stored prompt: template
    assert ex[2].prompt == render_prompt("Do thing 2.", "x\ny")  # <n> decoded back to newlines
    assert ex[3].prompt == "custom wrapper"  # a stored prompt is kept as MiniLLM evaluated it
    assert t.describe_load("test")["notes"] == {"prompt_differs_from_template": 1}


# -- Self-Instruct, Vicuna -----------------------------------------------------------------------

def test_self_inst_upstream_and_preference(tmp_path):
    d = tmp_path / "self-inst"
    write_jsonl(d / "user_oriented_instructions.jsonl", [
        {"id": "user_oriented_task_0", "motivation_app": "Grammarly", "instruction": "Fix it.",
         "instances": [{"input": "teh cat", "output": "the cat"}]},
        {"id": "user_oriented_task_1", "motivation_app": "Gmail", "instruction": "Reply.",
         "instances": [{"input": "", "output": "ok"}, {"input": "hi", "output": "hello"}]}])
    t = make("self_inst", tmp_path)
    ex = t.examples("test")
    assert [e.id for e in ex] == ["self_inst-user_oriented_task_0", "self_inst-user_oriented_task_1-0",
                                  "self_inst-user_oriented_task_1-1"]
    assert ex[0].meta["topic"] == "Grammarly" and ex[0].prompt == render_prompt("Fix it.", "teh cat")
    assert ex[1].prompt == render_prompt("Reply.", "")
    # MiniLLM's processed file wins when both exist
    write_jsonl(d / "minillm" / "valid.jsonl", [rec(0)])
    t = make("self_inst", tmp_path)
    assert len(t.examples("test")) == 1 and t.describe_load("test")["source"].endswith("minillm/valid.jsonl")


def test_vicuna_processed_and_fastchat(tmp_path):
    d = tmp_path / "vicuna"
    write_jsonl(d / "question.jsonl", [{"question_id": 1, "text": "Q1?", "category": "generic"},
                                       {"question_id": 2, "turns": ["Q2?", "follow-up"], "category": "math"}])
    write_jsonl(d / "answer" / "answer_gpt35.jsonl", [{"question_id": "2", "text": "A2"},
                                                      {"question_id": 1, "choices": [{"turns": ["A1"]}]}])
    ex = make("vicuna", tmp_path).examples("test")
    assert [(e.id, e.instruction, e.references, e.meta["category"]) for e in ex] == [
        ("vicuna-1", "Q1?", ["A1"], "generic"), ("vicuna-2", "Q2?", ["A2"], "math")]
    assert ex[0].prompt == render_prompt("Q1?")
    write_jsonl(d / "answer" / "answer_gpt35.jsonl", [{"question_id": 1, "text": "A1"}])
    with pytest.raises(DataError, match=r"no answer for question_id 2 \(question at .*question.jsonl:2\)"):
        make("vicuna", tmp_path).examples("test")
    write_jsonl(d / "minillm" / "valid.jsonl", [{"instruction": "Q?", "category": "fermi", "output": "A",
                                                 "prompt": render_prompt("Q?")}])
    ex = make("vicuna", tmp_path).examples("test")
    assert len(ex) == 1 and ex[0].meta["category"] == "fermi"


# -- S-NI and UnNI: references and length buckets ------------------------------------------------

def _sni_upstream(root: Path, n_tasks=2, per_task=4):
    d = root / "sinst"
    names = [f"task{i}_demo" for i in range(n_tasks)]
    (d / "splits" / "default").mkdir(parents=True)
    (d / "splits" / "default" / "test_tasks.txt").write_text("\n".join(names) + "\n")
    (d / "tasks").mkdir()
    lengths = [3, 8, 12, 20]  # words in the first reference: buckets 0_5, 6_10, 11_, 11_
    for name in names:
        inst = [{"id": f"{name}-{k}", "input": f"in {k}",
                 "output": [" ".join(["w"] * lengths[k % 4]), "alt"]} for k in range(per_task)]
        (d / "tasks" / f"{name}.json").write_text(json.dumps({"Definition": [f"Define {name}."],
                                                              "Instances": inst}))
    return d


@pytest.mark.parametrize("bucket,count", [("11_", 4), ("0_5", 2), ("6_10", 2), ("all", 8)])
def test_sni_upstream_buckets(tmp_path, bucket, count):
    _sni_upstream(tmp_path, per_task=4)
    t = make("sni", tmp_path, extra={"length_bucket": bucket})
    ex = t.examples("test")
    assert len(ex) == count
    assert all(len(e.references) == 2 and e.references[1] == "alt" for e in ex)  # every reference kept
    assert ex[0].instruction.startswith("Define task0") and ex[0].meta["topic"] == "task0_demo"
    assert ex[0].prompt == render_prompt(ex[0].instruction, ex[0].input)
    assert t.describe_load("test")["dropped"].get("outside_length_bucket", 0) == 8 - count


def test_sni_max_instances_and_missing_task_file(tmp_path):
    d = _sni_upstream(tmp_path, per_task=8)
    t = make("sni", tmp_path, extra={"length_bucket": "all", "max_instances_per_task": 5})
    assert len(t.examples("test")) == 10
    assert t.describe_load("test")["dropped"] == {"over_max_instances_per_task": 6}
    (d / "tasks" / "task1_demo.json").unlink()
    with pytest.raises(DataError, match="1 of the 2 test tasks.*task1_demo"):
        make("sni", tmp_path).examples("test")


def test_sni_processed_bucket_folder_is_used_as_is(tmp_path):
    d = tmp_path / "sinst"
    # bucket folders were cut by tokenizer tokens: a 4-word reference may live in 11_
    write_jsonl(d / "11_" / "valid.jsonl", [rec(0, "x", output=["four words right here", "b"], topic="t1")])
    write_jsonl(d / "6_10" / "valid.jsonl", [rec(1, output=["six words in this one ok"]), rec(2)])
    assert make("sni", tmp_path).examples("test")[0].references == ["four words right here", "b"]
    assert len(make("sni", tmp_path, extra={"length_bucket": "6_10"}).examples("test")) == 2


def test_flat_processed_file_is_bucketed_by_words(tmp_path):
    d = tmp_path / "uinst"
    refs = ["yes", "one two three four five six", " ".join(["w"] * 11)]
    write_jsonl(d / "valid.jsonl", [rec(i, output=r) for i, r in enumerate(refs)])
    assert [e.references[0] for e in make("unni", tmp_path).examples("test")] == [refs[2]]
    t = make("unni", tmp_path, extra={"length_bucket": "0_2"})
    assert [e.references[0] for e in t.examples("test")] == ["yes"]
    assert t.describe_load("test")["dropped"] == {"outside_length_bucket": 2}


def test_unni_processed_cap_and_upstream_sampling(tmp_path):
    d = tmp_path / "uinst"
    write_jsonl(d / "11_" / "valid.jsonl", [rec(i) for i in range(5)])
    t = make("unni", tmp_path, extra={"num_examples": 3})
    assert [e.instruction for e in t.examples("test")] == ["Do thing 0.", "Do thing 1.", "Do thing 2."]
    assert t.describe_load("test")["dropped"] == {"over_num_examples": 2}

    up = tmp_path / "up" / "unnatural-instructions"
    long = " ".join(["w"] * 12)
    write_jsonl(up / "core_data.jsonl", [
        {"instruction": f"Task {i}.", "instances": [
            {"instruction_with_input": "x", "input": f"in {i}", "constraints": "None.", "output": long},
            {"instruction_with_input": "x", "input": "short", "constraints": "None.", "output": "no"}]}
        for i in range(10)])
    t = make("unni", tmp_path / "up", extra={"num_examples": 4, "sample_seed": 1})
    ex = t.examples("test")
    assert len(ex) == 4 and all(e.references == [long] for e in ex)
    assert ex == sorted(ex, key=lambda e: e.id) and ex[0].meta["constraints"] == "None."
    assert t.describe_load("test")["dropped"] == {"outside_length_bucket": 10, "not_sampled": 6}
    again = make("unni", tmp_path / "up", extra={"num_examples": 4, "sample_seed": 1}).examples("test")
    assert [e.id for e in again] == [e.id for e in ex]  # the subset is reproducible


def test_bucket_parsing_and_settings_errors():
    assert parse_bucket("11_") == (11, None) and parse_bucket("6_10") == (6, 10) and parse_bucket("all") is None
    for bad in ("11", "10_6", "x_", "_5"):
        with pytest.raises(ConfigError, match="length bucket"):
            parse_bucket(bad)
    with pytest.raises(ConfigError, match="task_options.sni.length_bucket"):
        make("sni", extra={"length_bucket": "long"})
    with pytest.raises(ConfigError, match="Did you mean 'length_bucket'"):
        make("unni", extra={"lenght_bucket": "11_"})
    with pytest.raises(ConfigError, match="takes no task_options"):
        make("sst2", extra={"length_bucket": "11_"})
    # constructor keywords win over options.extra
    t = TASKS.get("sni")(TaskOptions(extra={"length_bucket": "0_5"}), length_bucket="6_10")
    assert t.settings.length_bucket == "6_10"


# -- SST-2 and BoolQ -----------------------------------------------------------------------------

def test_sst2_tsv_layouts(tmp_path):
    d = tmp_path / "sst2"
    d.mkdir()
    (d / "dev.tsv").write_text("sentence\tlabel\nit 's a \"charming\" film . \t1\nbleak \t0\n")
    ex = make("sst2", tmp_path).examples("test")
    assert [(e.input, e.references, e.meta["label"]) for e in ex] == [
        ("it 's a \"charming\" film .", ["positive"], 1), ("bleak", ["negative"], 0)]
    assert ex[0].meta["label_words"] == ["negative", "positive"]
    assert ex[0].prompt == render_prompt(ex[0].instruction, ex[0].input)
    (d / "dev.tsv").write_text("label\ttext_a\n0\tdull\n")  # swapped columns, another text name
    assert make("sst2", tmp_path).examples("test")[0].references == ["negative"]


@pytest.mark.parametrize("content,match", [
    ("sentence\tlabel\ngood\t2\n", r"dev.tsv:2: field 'label' must be 0 or 1"),
    ("sentence\tlabel\ngood\t1\tx\n", r"dev.tsv:2: expected 2 tab-separated fields"),
    ("review\tlabel\ngood\t1\n", r"dev.tsv:1: header must name a text column"),
    ("sentence\tlabel\n", r"no data rows"),
])
def test_sst2_malformed(tmp_path, content, match):
    (tmp_path / "sst2").mkdir()
    (tmp_path / "sst2" / "dev.tsv").write_text(content)
    with pytest.raises(DataError, match=match):
        make("sst2", tmp_path).examples("test")


def test_boolq_labels_and_formats(tmp_path):
    d = tmp_path / "boolq"
    write_jsonl(d / "val.jsonl", [
        {"question": "is the sky blue", "passage": "Sky -- It is blue.", "idx": 0, "label": "true"},
        {"question": "is grass red?", "passage": "Grass -- Green.", "idx": 1, "label": False},
        {"question": "is it", "passage": "P -- x", "idx": 2, "label": 1}])
    ex = make("boolq", tmp_path).examples("test")
    assert [e.meta["label"] for e in ex] == [1, 0, 1] and [e.references[0] for e in ex] == ["yes", "no", "yes"]
    assert ex[0].input == "Passage: Sky -- It is blue.\nQuestion: is the sky blue?"
    assert ex[1].input.endswith("Question: is grass red?") and ex[0].meta["label_words"] == ["no", "yes"]
    (d / "val.jsonl").unlink()
    write_jsonl(d / "dev.jsonl", [{"question": "is the sky blue", "title": "Sky", "passage": "It is blue.",
                                   "answer": True}])
    assert make("boolq", tmp_path).examples("test")[0].input == ex[0].input  # same prompt as SuperGLUE's


def test_boolq_bad_label(tmp_path):
    write_jsonl(tmp_path / "boolq" / "val.jsonl", [{"question": "q", "passage": "p", "label": "maybe"}])
    with pytest.raises(DataError, match=r"val.jsonl:1: field 'label' must be a boolean"):
        make("boolq", tmp_path).examples("test")
    write_jsonl(tmp_path / "boolq" / "val.jsonl", [{"question": "q", "passage": "p", "label": [1]}])
    with pytest.raises(DataError, match=r"val.jsonl:1: field 'label' must be a boolean or .*, got a list"):
        make("boolq", tmp_path).examples("test")


# -- malformed input -----------------------------------------------------------------------------

def _put(tmp_path, data: bytes) -> Path:
    p = tmp_path / "self_inst" / "valid.jsonl"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def _line(r) -> bytes:
    return (json.dumps(r) + "\n").encode()


@pytest.mark.parametrize("data,match", [
    (_line(rec(0)) + b'{"instruction": "x", "output": \n', r"valid.jsonl:2: invalid JSON at column \d+"),
    (_line(rec(0)) + _line({"input": "", "output": "o"}), r"valid.jsonl:2: missing field 'instruction'"),
    (_line({"instruction": "i", "input": ""}),
     r"valid.jsonl:1: missing field 'output' \(fields present: input, instruction\)"),
    (_line({"instruction": "i", "output": 3}),
     r"valid.jsonl:1: field 'output' must be a string or a list, got an integer"),
    (_line({"instruction": "i", "output": ["a", 2]}), r"valid.jsonl:1: field 'output\[1\]' must be a string"),
    (_line({"instruction": "i", "output": []}), r"valid.jsonl:1: field 'output' is an empty list"),
    (_line({"instruction": ["i"], "output": "o"}), r"valid.jsonl:1: field 'instruction' must be a string, got a list"),
    (_line(rec(0)) + b"\n" + b"[1, 2]\n", r"valid.jsonl:3: expected a JSON object per line, got a list"),
    (b"", r"valid.jsonl: file is empty"),
    (b"\n  \n", r"valid.jsonl: file is empty"),
    (_line(rec(0)) + '{"instruction": "caf\u00e9"}\n'.encode("latin-1"), r"valid.jsonl:2: not valid UTF-8 \(byte 0xe9"),
])
def test_malformed_jsonl(tmp_path, data, match):
    _put(tmp_path, data)
    with pytest.raises(DataError, match=match):
        make("self_inst", tmp_path).examples("test")


def test_readers_tolerate_bom_crlf_and_u2028(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps({"t": "x\u2028y"}, ensure_ascii=False).encode() + b"\r\n\r\n")
    assert [r for _, r in read_jsonl(p)] == [{"t": "x\u2028y"}]
    q = tmp_path / "a.tsv"
    q.write_text("a\tb\r\n1\t2\r\n")
    assert read_tsv(q) == (["a", "b"], [(f"{q}:2", ["1", "2"])])


def test_upstream_nested_errors_name_the_field(tmp_path):
    d = _sni_upstream(tmp_path, n_tasks=1, per_task=2)
    p = d / "tasks" / "task0_demo.json"
    obj = json.loads(p.read_text())
    obj["Instances"][1]["output"] = "not a list is fine"
    del obj["Instances"][1]["input"]
    p.write_text(json.dumps(obj))
    with pytest.raises(DataError, match=r"task0_demo.json: Instances\[1\]: missing field 'input'"):
        make("sni", tmp_path, extra={"length_bucket": "all"}).examples("test")
    p.write_text('{"Definition": ["d"],\n "Instances": [,]}')
    with pytest.raises(DataError, match=r"task0_demo.json:2: invalid JSON"):
        make("sni", tmp_path).examples("test")
    write_jsonl(tmp_path / "self_inst" / "user_oriented_instructions.jsonl",
                [{"instruction": "i", "instances": [{"input": "x"}]}])
    with pytest.raises(DataError, match=r"user_oriented_instructions.jsonl:1: instances\[0\]: missing field 'output'"):
        make("self_inst", tmp_path).examples("test")


# -- lookup, errors, hub fallback ----------------------------------------------------------------

def test_missing_data_error_lists_every_path(tmp_path):
    with pytest.raises(DataError) as e:
        make("vicuna", tmp_path).examples("test")
    msg = str(e.value)
    for rel in ("vicuna/minillm/valid.jsonl", "vicuna/valid.jsonl", "vicuna/question.jsonl + ",
                "vicuna/answer/answer_gpt35.jsonl", "Vicuna/table/question.jsonl"):
        assert str(tmp_path / rel) in msg or rel in msg
    assert "MiniLLM/Vicuna" in msg and "not tried" in msg and "How to get it" in msg
    with pytest.raises(DataError, match="No local data folder is configured.*KDBENCH_DATA"):
        make("boolq").examples("test")
    with pytest.raises(DataError, match="These data roots do not exist: .*nowhere"):
        make("boolq", tmp_path / "nowhere").examples("test")


def test_env_root_task_folder_root_and_precedence(tmp_path, monkeypatch):
    write_jsonl(tmp_path / "env" / "self_inst" / "valid.jsonl", [rec(0)])
    write_jsonl(tmp_path / "opt" / "self-inst" / "valid.jsonl", [rec(1), rec(2)])
    monkeypatch.setenv("KDBENCH_DATA", str(tmp_path / "env"))
    assert len(make("self_inst").examples("test")) == 1
    assert len(make("self_inst", tmp_path / "opt").examples("test")) == 2  # data_dir wins over the env
    assert len(make("self_inst", tmp_path / "opt" / "self-inst").examples("test")) == 2  # root = task folder


def test_hub_fallback_only_online_and_without_local_data(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load_dataset(path, name=None, **kw):
        calls.append((path, name, kw))
        return [{"sentence": "great", "label": 1, "idx": 0}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    with pytest.raises(DataError, match="not tried"):
        make("sst2", tmp_path).examples("test")
    assert calls == []
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    t = make("sst2", tmp_path)
    assert t.examples("test")[0].references == ["positive"]
    assert calls == [("nyu-mll/glue", "sst2", {"split": "validation"})]
    assert t.describe_load("test")["source"] == "hf:nyu-mll/glue (sst2, validation)"
    calls.clear()
    fake_rows = [rec(0, output=["a", "b"])]
    monkeypatch.setattr(datasets, "load_dataset", lambda path, **kw: calls.append((path, kw)) or fake_rows)
    assert make("sni", tmp_path).examples("test")[0].references == ["a", "b"]
    assert calls == [("MiniLLM/sinst", {"data_files": {"rows": "11_/valid.jsonl"}, "split": "rows"})]

    def failing(path, **kw):
        raise ConnectionError("no route")

    monkeypatch.setattr(datasets, "load_dataset", failing)
    with pytest.raises(DataError, match="could not be loaded: ConnectionError: no route"):
        make("dolly", tmp_path).examples("test")


# -- load reports and prompt-length filtering ----------------------------------------------------

def test_filter_by_prompt_length_drops_and_reports(tmp_path):
    write_jsonl(tmp_path / "vicuna" / "valid.jsonl",
                [rec(i, "w " * (10 * i)) for i in range(6)])
    t = make("vicuna", tmp_path, max_eval_examples=5)
    exs = t.examples("test")
    words = lambda s: len(s.split())  # noqa: E731 - a stand-in tokenizer
    limit = words(exs[2].prompt)
    kept, dropped = t.filter_by_prompt_length(exs, words, max_prompt_tokens=limit)
    assert dropped == 2 and [e.id for e in kept] == [e.id for e in exs[:3]]
    assert all(k.prompt == e.prompt for k, e in zip(kept, exs))  # kept prompts are never truncated
    t.filter_by_prompt_length(exs, words, max_prompt_tokens=limit)  # a second call does not double count
    rep = t.describe_load("test")
    assert rep == {"loaded": 3, "dropped": {"over_max_examples_cap": 1, "prompt_too_long": 2},
                   "source": str(tmp_path / "vicuna" / "valid.jsonl")}


def test_describe_load_whole_task_and_fingerprint(tmp_path):
    d = tmp_path / "dolly"
    write_jsonl(d / "valid.jsonl", [rec(0)])
    write_jsonl(d / "dev.jsonl", [rec(i) for i in range(1, 5)])
    t = make("dolly", tmp_path, extra={"fallback_dev_num": 2})
    rep = t.describe_load()
    assert rep["loaded"] == 5 and set(rep["splits"]) == {"train", "dev", "test"}
    assert rep["source"]["test"] == str(d / "valid.jsonl")
    fp = t.fingerprint()
    assert fp["settings"] == {"dev_num": 1000, "fallback_dev_num": 2, "pretrain_on_train": False}
    assert fp["data"]["test"]["source"] == str(d / "valid.jsonl") and len(fp["data"]["test"]["sha256"]) == 64
    write_jsonl(d / "valid.jsonl", [rec(0), rec(9)])
    assert make("dolly", tmp_path).fingerprint()["data"]["test"]["sha256"] != fp["data"]["test"]["sha256"]


# -- the real files in ../shared/data ---------------------------------------------------------

real = pytest.mark.skipif(not SHARED.is_dir(), reason=f"real data folder {SHARED} is absent (set KDBENCH_SHARED_DATA)")


@real
def test_real_template_reproduces_every_stored_prompt():
    files = sorted(SHARED.glob("**/*.jsonl"))
    checked = 0
    for f in files:
        for where, r in read_jsonl(f):
            if "prompt" in r:
                assert render_prompt(r["instruction"], r.get("input", "")) == r["prompt"].replace("<n>", "\n"), where
                checked += 1
    assert checked >= 500 + 1000 + 242 + 1694 + 80


@real
@pytest.mark.parametrize("name,size", [("dolly", 500), ("self_inst", 242), ("vicuna", 80), ("sni", 1694),
                                       ("sst2", 872), ("boolq", 3270)])
def test_real_test_split_sizes(name, size):
    t = make(name, SHARED)
    ex = t.examples("test")
    assert len(ex) == size
    rep = t.describe_load("test")
    assert rep["loaded"] == size and "prompt_differs_from_template" not in rep.get("notes", {})
    assert all(e.prompt == render_prompt(e.instruction, e.input) for e in ex)
    if name in ("sst2", "boolq"):
        assert all(e.references == [e.meta["label_words"][e.meta["label"]]] for e in ex)
    if name == "sni":
        assert sum(len(e.references) > 1 for e in ex) == 1694 - 1306  # every reference kept


@real
def test_real_dolly_fallback_splits():
    t = make("dolly", SHARED)
    assert (len(t.examples("train")), len(t.examples("dev"))) == (899, 100)  # 1000 - 1 test overlap - 100
    assert t.describe_load("train")["dropped"] == {"overlaps_test": 1}


@real
def test_real_upstream_files_match_minillm_copies(tmp_path):
    (tmp_path / "self_inst").mkdir()
    (tmp_path / "self_inst" / "user_oriented_instructions.jsonl").symlink_to(
        SHARED / "self_inst" / "user_oriented_instructions.jsonl")
    up = make("self_inst", tmp_path).examples("test")
    assert len(up) == 252
    processed = {(e.instruction, e.input, e.target) for e in make("self_inst", SHARED).examples("test")}
    assert processed <= {(e.instruction, e.input, e.target) for e in up}

    (tmp_path / "vicuna").mkdir()
    for f in ("question.jsonl", "answer_gpt35.jsonl"):
        (tmp_path / "vicuna" / f).symlink_to(SHARED / "vicuna" / f)
    v_up = make("vicuna", tmp_path).examples("test")
    v_mini = make("vicuna", SHARED).examples("test")
    assert len(v_up) == 80
    assert {(e.prompt, e.target) for e in v_up} == {(e.prompt, e.target) for e in v_mini}


@real
def test_real_uinst_short_subset_is_not_picked_up_but_buckets_as_flat_file(tmp_path):
    with pytest.raises(DataError, match="no data found for task 'unni'"):
        make("unni", SHARED).examples("test")
    (tmp_path / "uinst").mkdir()
    (tmp_path / "uinst" / "valid.jsonl").symlink_to(SHARED / "uinst" / "minillm_short_response_subset" / "valid.jsonl")
    assert len(make("unni", tmp_path, extra={"length_bucket": "0_2"}).examples("test")) == 1050
    assert len(make("unni", tmp_path).examples("test")) == 0
