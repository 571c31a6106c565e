"""`glue_tasks` data: the task table, the GLUE file parsers, `load_glue` and the shipped SST-2 sample.

Tests on the real GLUE files read them from `$HF_LOTTERY_GLUE_DIR` or `<repo>/../shared/glue` and
skip when neither exists. MNLI and QQP (not in that folder) are tested on tiny files in their
original layout.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from pathlib import Path

import datasets
import numpy as np
import pytest

import glue_tasks
from glue_tasks import TASKS, GlueFormatError, get_task, hub_features, load_glue, sample_dataset_dir

REPO_ROOT = Path(__file__).resolve().parents[1]


def _find_glue_dir() -> Path | None:
    env = os.environ.get("HF_LOTTERY_GLUE_DIR")
    candidate = Path(env) if env else REPO_ROOT.parent / "shared" / "glue"
    return candidate if candidate.is_dir() else None


GLUE_DIR = _find_glue_dir()
needs_glue = pytest.mark.skipif(
    GLUE_DIR is None, reason="real GLUE files not found (set HF_LOTTERY_GLUE_DIR or provide ../shared/glue)"
)

# The Hub schema of nyu-mll/glue, written out independently of glue_tasks.TASKS.
HUB_COLUMNS = {
    "cola": (["sentence"], ["unacceptable", "acceptable"]),
    "sst2": (["sentence"], ["negative", "positive"]),
    "mrpc": (["sentence1", "sentence2"], ["not_equivalent", "equivalent"]),
    "stsb": (["sentence1", "sentence2"], None),
    "qqp": (["question1", "question2"], ["not_duplicate", "duplicate"]),
    "mnli": (["premise", "hypothesis"], ["entailment", "neutral", "contradiction"]),
    "qnli": (["question", "sentence"], ["entailment", "not_entailment"]),
    "rte": (["sentence1", "sentence2"], ["entailment", "not_entailment"]),
    "wnli": (["sentence1", "sentence2"], ["not_entailment", "entailment"]),
}
HUB_SPLITS = {
    "mnli": ["train", "validation_matched", "validation_mismatched", "test_matched", "test_mismatched"],
}
ORIGINAL_FOLDERS = {
    "cola": "CoLA",
    "sst2": "SST-2",
    "mrpc": "MRPC",
    "stsb": "STS-B",
    "qqp": "QQP",
    "mnli": "MNLI",
    "qnli": "QNLI",
    "rte": "RTE",
    "wnli": "WNLI",
}


def expected_features(task: str) -> datasets.Features:
    text_columns, label_names = HUB_COLUMNS[task]
    features = {column: datasets.Value("string") for column in text_columns}
    features["label"] = datasets.ClassLabel(names=label_names) if label_names else datasets.Value("float32")
    features["idx"] = datasets.Value("int32")
    return datasets.Features(features)


# Official GLUE split sizes, and label counts of the files (label id -> rows).
OFFICIAL_ROWS = {
    "sst2": {"train": 67_349, "validation": 872},
    "mrpc": {"train": 3_668, "validation": 408},
    "rte": {"train": 2_490, "validation": 277},
    "cola": {"train": 8_551, "validation": 1_043},
    "stsb": {"train": 5_749, "validation": 1_500},
    "wnli": {"train": 635, "validation": 71},
    "qnli": {"validation": 5_463},
}
LABEL_COUNTS = {
    ("sst2", "train"): {0: 29_780, 1: 37_569},
    ("sst2", "validation"): {0: 428, 1: 444},
    ("cola", "train"): {0: 2_528, 1: 6_023},
    ("cola", "validation"): {0: 322, 1: 721},
    ("mrpc", "train"): {0: 1_194, 1: 2_474},
    ("mrpc", "validation"): {0: 129, 1: 279},
    ("rte", "train"): {0: 1_249, 1: 1_241},  # 0 = entailment
    ("rte", "validation"): {0: 146, 1: 131},
    ("qnli", "validation"): {0: 2_702, 1: 2_761},  # 0 = entailment
    ("wnli", "train"): {0: 323, 1: 312},  # 0 = not_entailment
    ("wnli", "validation"): {0: 40, 1: 31},
}
# (task, split, row) -> expected text columns and label name (or STS-B score).
FIRST_ROWS = {
    ("sst2", "train", 0): ({"sentence": "hide new secretions from the parental units "}, "negative"),
    ("sst2", "validation", 0): ({"sentence": "it 's a charming and often affecting journey . "}, "positive"),
    ("sst2", "validation", 1): ({"sentence": "unflinchingly bleak and desperate "}, "negative"),
    ("cola", "train", 0): (
        {"sentence": "Our friends won't buy this analysis, let alone the next one we propose."},
        "acceptable",
    ),
    ("cola", "train", 18): ({"sentence": "They drank the pub."}, "unacceptable"),
    ("cola", "validation", 0): ({"sentence": "The sailors rode the breeze clear of the rocks."}, "acceptable"),
    ("mrpc", "train", 0): (
        {
            "sentence1": 'Amrozi accused his brother, whom he called "the witness", of deliberately distorting his evidence.',
            "sentence2": 'Referring to him as only "the witness", Amrozi accused his brother of deliberately distorting his evidence.',
        },
        "equivalent",
    ),
    ("mrpc", "validation", 0): (
        {
            "sentence1": "He said the foodservice pie business doesn't fit the company's long-term growth strategy.",
            "sentence2": '"The foodservice pie business does not fit our long-term growth strategy.',
        },
        "equivalent",
    ),
    ("rte", "train", 0): (
        {
            "sentence1": "No Weapons of Mass Destruction Found in Iraq Yet.",
            "sentence2": "Weapons of Mass Destruction Found in Iraq.",
        },
        "not_entailment",
    ),
    ("rte", "train", 1): (
        {"sentence2": "Pope Benedict XVI is the new leader of the Roman Catholic Church."},
        "entailment",
    ),
    ("stsb", "train", 0): ({"sentence1": "A plane is taking off.", "sentence2": "An air plane is taking off."}, 5.0),
    ("stsb", "train", 1): (
        {"sentence1": "A man is playing a large flute.", "sentence2": "A man is playing a flute."},
        3.8,
    ),
    ("wnli", "train", 0): ({"sentence2": "The carrot had a hole."}, "entailment"),
    ("wnli", "validation", 0): ({"sentence2": "The hair has to be cleaned."}, "not_entailment"),
    ("qnli", "validation", 0): (
        {"question": "What came into force after the new constitution was herald?"},
        "entailment",
    ),
    ("qnli", "validation", 1): (
        {"question": "What is the first major city in the stream of the Rhine?"},
        "not_entailment",
    ),
}


@functools.cache
def _real(task: str) -> datasets.DatasetDict:
    return load_glue(task, data_dir=GLUE_DIR, splits=list(OFFICIAL_ROWS[task]))


# --- the task table ---------------------------------------------------------------------------------


def test_tasks_cover_glue_with_hub_names():
    assert sorted(TASKS) == sorted(HUB_COLUMNS)
    for name, task in TASKS.items():
        text_columns, label_names = HUB_COLUMNS[name]
        assert task.name == name
        assert task.folder == ORIGINAL_FOLDERS[name]
        assert list(task.text_columns) == text_columns
        assert list(task.splits) == HUB_SPLITS.get(name, ["train", "validation", "test"])
        assert task.is_regression == (name == "stsb")
        assert task.num_labels == (1 if name == "stsb" else len(label_names))
        assert list(task.label_names) == (label_names or [])
        assert task.main_metric in task.metric_names
        assert hub_features(name) == expected_features(name)
    assert TASKS["mnli"].validation_splits == ("validation_matched", "validation_mismatched")
    assert TASKS["mnli"].label2id == {"entailment": 0, "neutral": 1, "contradiction": 2}
    assert TASKS["wnli"].id2label == {0: "not_entailment", 1: "entailment"}


def test_tasks_are_frozen():
    with pytest.raises(AttributeError):
        TASKS["sst2"].num_labels = 3


def test_get_task_accepts_original_spellings():
    assert get_task("SST-2") is TASKS["sst2"]
    assert get_task("STS-B") is TASKS["stsb"]
    assert get_task(TASKS["rte"]) is TASKS["rte"]


def test_unknown_task_lists_known_ones(tmp_path):
    with pytest.raises(
        ValueError, match=r"Unknown GLUE task 'sst3'.*cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli"
    ):
        load_glue("sst3", data_dir=tmp_path)


def test_public_api():
    for name in ("TASKS", "GlueTask", "load_glue", "compute_metrics_fn", "load_recipe", "sample_dataset_dir"):
        assert name in glue_tasks.__all__


# --- the real GLUE files ----------------------------------------------------------------------------


@needs_glue
@pytest.mark.parametrize("task", sorted(OFFICIAL_ROWS))
def test_real_files_have_official_sizes_and_hub_schema(task):
    dataset_dict = _real(task)
    assert {split: len(dataset) for split, dataset in dataset_dict.items()} == OFFICIAL_ROWS[task]
    for split, dataset in dataset_dict.items():
        assert dataset.features == expected_features(task)
        assert dataset.column_names == list(expected_features(task))
        assert dataset.split == split
        assert dataset["idx"][:3] == [0, 1, 2]


@needs_glue
@pytest.mark.parametrize(("task", "split"), sorted(LABEL_COUNTS))
def test_real_files_label_counts(task, split):
    labels, counts = np.unique(_real(task)[split].data.column("label").to_numpy(), return_counts=True)
    assert dict(zip(labels.tolist(), counts.tolist())) == LABEL_COUNTS[(task, split)]


@needs_glue
@pytest.mark.parametrize(("task", "split", "row"), sorted(FIRST_ROWS))
def test_real_files_spot_checks(task, split, row):
    texts, label = FIRST_ROWS[(task, split, row)]
    example = _real(task)[split][row]
    for column, text in texts.items():
        assert example[column] == text
    if isinstance(label, float):
        assert example["label"] == pytest.approx(label)
    else:
        assert _real(task)[split].features["label"].int2str(example["label"]) == label
    assert example["idx"] == row


@needs_glue
def test_default_splits_need_train_and_dev():
    # QNLI's train.tsv is not in the shared folder: without explicit splits that is an error naming it.
    with pytest.raises(FileNotFoundError, match=r"QNLI[/\\]train\.tsv.*dev\.tsv \(validation\)"):
        load_glue("qnli", data_dir=GLUE_DIR)


@needs_glue
def test_task_folder_itself_is_accepted():
    dataset_dict = load_glue("wnli", data_dir=GLUE_DIR / "WNLI")
    assert {split: len(dataset) for split, dataset in dataset_dict.items()} == OFFICIAL_ROWS["wnli"]


# --- MNLI and QQP in their original layout ----------------------------------------------------------

_MNLI_PARSES = "( ( A ) b )\t( ( C ) d )\t(ROOT (S a))\t(ROOT (S b))"
MNLI_TRAIN = (
    "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
    "sentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label\n"
    f"0\t31193\t31193n\tgovernment\t{_MNLI_PARSES}\tConceptually cream skimming has two basic dimensions - "
    "product and geography.\tProduct and geography are what make cream skimming work. \tneutral\tneutral\n"
    f"1\t101457\t101457e\ttelephone\t{_MNLI_PARSES}\tyou know during the season and i guess at at your level uh\t"
    'You lose the things to the following level if the people recall "\tentailment\tentailment\n'
    f"2\t134793\t134793e\tfiction\t{_MNLI_PARSES}\tOne of our number will carry out your instructions minutely.\t"
    "A member of my team will execute your orders with immense precision.\tentailment\tentailment\n"
    f"3\t37397\t37397e\tfiction\t{_MNLI_PARSES}\tHow do you know? All this is their information again.\t"
    "This information belongs to them.\tcontradiction\tcontradiction\n"
)
_MNLI_DEV_HEADER = (
    "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
    "sentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label\n"
)
MNLI_DEV_MATCHED = (
    _MNLI_DEV_HEADER
    + f"0\t63735\t63735n\tslate\t{_MNLI_PARSES}\tThe new rights are nice enough\tEveryone really likes the newest "
    "benefits \tneutral\tentailment\tneutral\tneutral\tneutral\tneutral\n"
    f"1\t91383\t91383c\tgovernment\t{_MNLI_PARSES}\tThis site includes a list of all award winners.\t"
    "The Government Executive articles housed on the website are not able to be searched .\tcontradiction\t"
    "contradiction\tcontradiction\tcontradiction\tcontradiction\tcontradiction\n"
)
MNLI_DEV_MISMATCHED = (
    _MNLI_DEV_HEADER
    + f"0\t75290\t75290c\tletters\t{_MNLI_PARSES}\tYour contribution helped make it possible for us to provide our "
    "students with a quality education.\tYour contributions were of no help with our students' education.\t"
    "contradiction\tcontradiction\tcontradiction\tcontradiction\tcontradiction\tcontradiction\n"
)
MNLI_TEST_MATCHED = (
    "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
    "sentence2_parse\tsentence1\tsentence2\n"
    f"0\t31349\t31349\tgovernment\t{_MNLI_PARSES}\tHierbas, ans seco, ans dulce, and frigola are just a few "
    "names worth keeping a look-out for.\tHierbas is a name worth looking out for.\n"
)
QQP_TRAIN = (
    "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
    "133273\t213221\t213222\tHow is the life of a math student? Could you describe your own experiences?\t"
    "Which level of prepration is enough for the exam jlpt5?\t0\n"
    "402555\t536040\t536041\tHow do I control my horny emotions?\tHow do you control your horniness?\t1\n"
    '360472\t364011\t490273\tWhat causes stool color to change to yellow?\tWhat can cause stool to come out as "little balls?\t0\n'
)
QQP_DEV = (
    "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
    "201359\t303345\t303346\tWhy are African-Americans so beautiful?\tWhy are hispanics so beautiful?\t0\n"
    "263843\t69383\t380476\tI want to pursue PhD in Computer Science about social network,what is the open "
    "research topic?\tI handle social media for a non-profit. Should I start going to social media networking "
    "events? Are there any good ones in the bay area?\t0\n"
)
QQP_TEST = "id\tquestion1\tquestion2\n0\tHow does the Surface Pro himself 4 compare with iPad Pro?\tWhy did Microsoft choose core m3?\n"


def _write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


@pytest.fixture
def mnli_dir(tmp_path) -> Path:
    _write(
        tmp_path / "MNLI",
        {
            "train.tsv": MNLI_TRAIN,
            "dev_matched.tsv": MNLI_DEV_MATCHED,
            "dev_mismatched.tsv": MNLI_DEV_MISMATCHED,
            "test_matched.tsv": MNLI_TEST_MATCHED,
        },
    )
    return tmp_path


def test_mnli_original_layout(mnli_dir):
    dataset_dict = load_glue("mnli", data_dir=mnli_dir)
    # test_mismatched.tsv is absent: test files are optional.
    assert list(dataset_dict) == ["train", "validation_matched", "validation_mismatched", "test_matched"]
    assert {split: len(d) for split, d in dataset_dict.items()} == {
        "train": 4,
        "validation_matched": 2,
        "validation_mismatched": 1,
        "test_matched": 1,
    }
    for dataset in dataset_dict.values():
        assert dataset.features == expected_features("mnli")
    train = dataset_dict["train"]
    assert train[0] == {
        "premise": "Conceptually cream skimming has two basic dimensions - product and geography.",
        "hypothesis": "Product and geography are what make cream skimming work. ",
        "label": 1,
        "idx": 0,
    }
    assert train["label"] == [1, 0, 0, 2]  # neutral, entailment, entailment, contradiction
    assert train[1]["hypothesis"].endswith('if the people recall "')  # quoting is off
    # gold_label, not label1, is the label.
    assert dataset_dict["validation_matched"]["label"] == [1, 2]
    assert dataset_dict["validation_mismatched"][0]["label"] == 2
    assert dataset_dict["test_matched"][0]["label"] == -1
    assert dataset_dict["test_matched"][0]["hypothesis"] == "Hierbas is a name worth looking out for."


def test_mnli_explicit_test_split_must_exist(mnli_dir):
    with pytest.raises(FileNotFoundError, match=r"test_mismatched\.tsv"):
        load_glue("mnli", data_dir=mnli_dir, splits=["test_mismatched"])


def test_qqp_original_layout(tmp_path):
    _write(tmp_path / "QQP", {"train.tsv": QQP_TRAIN, "dev.tsv": QQP_DEV, "test.tsv": QQP_TEST})
    dataset_dict = load_glue("qqp", data_dir=tmp_path)
    assert {split: len(d) for split, d in dataset_dict.items()} == {"train": 3, "validation": 2, "test": 1}
    for dataset in dataset_dict.values():
        assert dataset.features == expected_features("qqp")
    assert dataset_dict["train"][0] == {
        "question1": "How is the life of a math student? Could you describe your own experiences?",
        "question2": "Which level of prepration is enough for the exam jlpt5?",
        "label": 0,
        "idx": 0,
    }
    assert dataset_dict["train"]["label"] == [0, 1, 0]
    assert dataset_dict["train"][2]["question2"] == 'What can cause stool to come out as "little balls?'
    assert dataset_dict["test"][0]["label"] == -1


def test_crlf_line_endings_and_blank_lines(tmp_path):
    text = "sentence\tlabel\r\ngood fun \t1\r\n\r\ndull \t0\r\n"
    _write(tmp_path / "SST-2", {"train.tsv": text, "dev.tsv": text})
    train = load_glue("sst2", data_dir=tmp_path)["train"]
    assert train["sentence"] == ["good fun ", "dull "]
    assert train["label"] == [1, 0]
    assert train["idx"] == [0, 1]


def test_stsb_test_file_gets_minus_one(tmp_path):
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2"
    labelled = f"{header}\tscore\n0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA.\tB.\t4.250\n"
    unlabelled = f"{header}\n0\tmain-captions\tMSRvid\t2012test\t0024\tnone\tnone\tA girl.\tA boy.\n"
    _write(tmp_path / "STS-B", {"train.tsv": labelled, "dev.tsv": labelled, "test.tsv": unlabelled})
    dataset_dict = load_glue("stsb", data_dir=tmp_path)
    assert dataset_dict["train"][0]["label"] == pytest.approx(4.25)
    assert dataset_dict["test"][0]["label"] == -1.0
    assert dataset_dict["test"].features == expected_features("stsb")


# --- errors -----------------------------------------------------------------------------------------


def test_missing_data_dir_is_named(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        load_glue("rte", data_dir=missing)


def test_missing_task_folder_says_what_is_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"RTE.*train\.tsv \(train\), dev\.tsv \(validation\)"):
        load_glue("rte", data_dir=tmp_path)


def test_missing_file_names_its_path(tmp_path):
    _write(tmp_path / "RTE", {"train.tsv": "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n"})
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "RTE" / "dev.tsv"))):
        load_glue("rte", data_dir=tmp_path)


def test_unknown_split_lists_the_task_splits(tmp_path):
    with pytest.raises(ValueError, match=r"validation_matched.*train, validation, test"):
        load_glue("rte", data_dir=tmp_path, splits="validation_matched")


_RTE_HEADER = "index\tsentence1\tsentence2\tlabel\n"


@pytest.mark.parametrize(
    ("task", "folder", "text", "line", "problem"),
    [
        (
            "rte",
            "RTE",
            _RTE_HEADER + "0\ta\tb\tentailment\n1\ta\tb\n",
            3,
            r"expected 4 tab-separated columns.*found 3",
        ),
        ("rte", "RTE", _RTE_HEADER + "0\ta\tb\tentailment\n1\ta\tb\tmaybe\n", 3, r"unknown label 'maybe'"),
        ("wnli", "WNLI", _RTE_HEADER + "0\ta\tb\t2\n", 2, r"unknown label '2'"),
        ("rte", "RTE", "index\tpremise\thypothesis\tlabel\n0\ta\tb\tentailment\n", 1, r"lacks column.*sentence1"),
        ("cola", "CoLA", "gj04\t1\t\tFine.\ngj04\t0\tBad.\n", 2, r"expected 4 tab-separated columns"),
        ("sst2", "SST-2", "sentence\tlabel\nfine \t1\nsplit \tby\ttab \t0\n", 3, r"found 4"),
        ("stsb", "STS-B", "index\tsentence1\tsentence2\tscore\n0\ta\tb\thigh\n", 2, r"not a number"),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path, task, folder, text, line, problem):
    _write(tmp_path / folder, {"train.tsv": text})
    path = tmp_path / folder / "train.tsv"
    with pytest.raises(GlueFormatError, match=re.escape(f"{path}, line {line}: ") + ".*" + problem) as info:
        load_glue(task, data_dir=tmp_path, splits="train")
    assert info.value.path == path
    assert info.value.line == line


# --- max_samples ------------------------------------------------------------------------------------


def test_max_samples_is_a_deterministic_subset():
    full = load_glue("sst2", data_dir=sample_dataset_dir())
    first = load_glue("sst2", data_dir=sample_dataset_dir(), max_samples=50, seed=1)
    again = load_glue("sst2", data_dir=sample_dataset_dir(), max_samples=50, seed=1)
    other = load_glue("sst2", data_dir=sample_dataset_dir(), max_samples=50, seed=2)
    for split in ("train", "validation"):
        assert len(first[split]) == 50
        assert first[split]["idx"] == again[split]["idx"]
        assert first[split]["idx"] != other[split]["idx"]
        assert first[split]["idx"] == sorted(first[split]["idx"])  # file order is kept
        rows = full[split].select(first[split]["idx"])
        assert rows["sentence"] == first[split]["sentence"]
        assert first[split].features == full[split].features


def test_max_samples_per_split():
    dataset_dict = load_glue("sst2", data_dir=sample_dataset_dir(), max_samples={"train": 10})
    assert len(dataset_dict["train"]) == 10
    assert len(dataset_dict["validation"]) == 872
    assert len(load_glue("sst2", data_dir=sample_dataset_dir(), max_samples=10_000)["train"]) == 3_000
    with pytest.raises(ValueError, match="test"):
        load_glue("sst2", data_dir=sample_dataset_dir(), max_samples={"test": 10})
    with pytest.raises(ValueError, match=">= 0"):
        load_glue("sst2", data_dir=sample_dataset_dir(), max_samples=-1)


# --- the Hub path (no network: datasets.load_dataset is replaced) -----------------------------------


def test_hub_path_calls_nyu_mll_glue(monkeypatch):
    calls = []

    def fake_load_dataset(path, name=None, **kwargs):
        calls.append((path, name))
        rows = {"premise": ["p"] * 5, "hypothesis": ["h"] * 5, "label": [0, 1, 2, 0, 1], "idx": list(range(5))}
        return datasets.DatasetDict(
            {
                split: datasets.Dataset.from_dict(rows, features=expected_features("mnli"))
                for split in HUB_SPLITS["mnli"]
            }
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    dataset_dict = load_glue("mnli", splits=["train", "validation_mismatched"], max_samples={"train": 2})
    assert calls == [("nyu-mll/glue", "mnli")]
    assert list(dataset_dict) == ["train", "validation_mismatched"]
    assert len(dataset_dict["train"]) == 2
    assert len(dataset_dict["validation_mismatched"]) == 5


# --- the shipped SST-2 sample -----------------------------------------------------------------------


def test_sample_dataset_loads():
    folder = sample_dataset_dir()
    assert folder == Path(glue_tasks.__file__).parent / "data" / "sst2_sample"
    dataset_dict = load_glue("sst2", data_dir=folder)
    assert {split: len(d) for split, d in dataset_dict.items()} == {"train": 3_000, "validation": 872}
    assert dataset_dict["train"].features == expected_features("sst2")
    assert set(dataset_dict["train"]["label"]) == {0, 1}


def test_sample_dataset_matches_its_sources_file():
    folder = sample_dataset_dir()
    sources = (folder / "SOURCES.md").read_text(encoding="utf-8")
    total = 0
    for name in ("train.tsv", "dev.tsv"):
        data = (folder / "SST-2" / name).read_bytes()
        total += len(data)
        assert hashlib.sha256(data).hexdigest() in sources
        assert f"{len(data):,}" in sources
    assert total <= 1_000_000
    assert "random.Random(42).sample" in sources  # the sampling script is recorded


@needs_glue
def test_sample_dataset_is_reproduced_by_its_recorded_script(tmp_path, monkeypatch):
    sources = (sample_dataset_dir() / "SOURCES.md").read_text(encoding="utf-8")
    script = re.search(r"```python\n(.*?)```", sources, flags=re.DOTALL).group(1)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_LOTTERY_GLUE_DIR", str(GLUE_DIR))
    exec(compile(script, "SOURCES.md", "exec"), {})
    for name in ("train.tsv", "dev.tsv"):
        made = tmp_path / "glue_tasks" / "data" / "sst2_sample" / "SST-2" / name
        assert made.read_bytes() == (sample_dataset_dir() / "SST-2" / name).read_bytes()
