"""Super-NaturalInstructions (S-NI): the 119 English test tasks, zero-shot from the task definition."""
from __future__ import annotations

from dataclasses import dataclass

from kdbench.errors import ConfigError, DataError
from kdbench.readers import get_field, get_references, in_bucket, opt_field, read_json, read_lines, render_prompt
from kdbench.realdata import BucketSettings, BucketedTask, LoadInfo, Source
from kdbench.schema import Example
from kdbench.task import TASKS


@dataclass
class SNISettings(BucketSettings):
    # S-NI's evaluation convention: the first 100 instances of each test task (upstream files only)
    max_instances_per_task: int = 100

    def __post_init__(self) -> None:
        if self.max_instances_per_task < 1:
            raise ConfigError("task_options.sni.max_instances_per_task must be >= 1, "
                              f"got {self.max_instances_per_task}")


@TASKS.register("sni")
class SNI(BucketedTask):
    """S-NI test tasks (eval only; Rouge-L, max over every reference).

    Files looked for under `<root>/sinst/` (also `sni/`, `natural-instructions/`), first match wins:

    1. MiniLLM's processed bucket file `minillm/<bucket>/valid.jsonl` or `<bucket>/valid.jsonl`
       (instruction = task Definition, input, output = list of references, prompt, topic = task).
       MiniLLM bucketed by tokenizer tokens; the folder is used as it is.
    2. a flat processed `minillm/valid.jsonl` or `valid.jsonl`, bucketed here by words.
    3. upstream allenai/natural-instructions: `tasks/<task>.json` (Definition, Instances with
       list-valued outputs) for every task in `splits/default/test_tasks.txt` (or `test_tasks.txt`);
       the first `max_instances_per_task` (100) instances per task, then the length bucket on the
       word count of the first reference. All references are kept.

    Hub fallback: `MiniLLM/sinst` (`<bucket>/valid.jsonl`; the hub has 0_2, 3_6, 6_10, 11_).
    Task options (task_options.sni): length_bucket ("11_"; "0_5", "6_10", any "A_B"/"A_", or "all"),
    max_instances_per_task (100).
    """

    name = "sni"
    description = "Super-NaturalInstructions test tasks, response-length bucket 11_ by default"
    version = 1
    splits = ("test",)
    default_metrics = ("rouge_l",)  # MiniLLM Table 1: Rouge-L only on S-NI and UnNI
    no_repeat_ngram_size = 6  # LMOps evaluate.py's --no-repeat-ngram-size default (reference/minillm.md §3.1)
    folders = ("sinst", "sni", "natural-instructions")
    Settings = SNISettings
    hf_repo = "MiniLLM/sinst"
    how_to_get = ("put MiniLLM's <bucket>/valid.jsonl (huggingface.co/datasets/MiniLLM/sinst) into "
                  "<data_dir>/sinst/, or the test task JSONs (tasks/<task>.json) and splits/default/test_tasks.txt "
                  "from github.com/allenai/natural-instructions.")

    def upstream_layouts(self) -> list[tuple[str, tuple[str, ...]]]:
        return [("upstream", ("tasks/", "splits/default/test_tasks.txt")), ("upstream", ("tasks/", "test_tasks.txt"))]

    def read(self, split: str, src: Source) -> tuple[list[Example], LoadInfo]:
        if src.kind != "upstream":
            return self.read_processed(split, src)
        tasks_dir, list_path = src.paths
        info = LoadInfo(src.label(), notes={"length_bucket": f"{self.settings.length_bucket} "
                                                              "(whitespace words of the first reference)"})
        names = read_lines(list_path)
        missing = [n for n in names if not (tasks_dir / f"{n}.json").is_file()]
        if missing:
            raise DataError(f"{tasks_dir}: {len(missing)} of the {len(names)} test tasks listed in {list_path} "
                            f"have no <task>.json file, e.g. {', '.join(missing[:5])}")
        bucket = self.bucket
        cap = self.settings.max_instances_per_task
        out: list[Example] = []
        for name in names:
            path = tasks_dir / f"{name}.json"
            obj = read_json(path)
            if not isinstance(obj, dict):
                raise DataError(f"{path}: expected a JSON object with 'Definition' and 'Instances'")
            definition = get_field(obj, "Definition", (str, list), str(path))
            if isinstance(definition, list):
                if not definition or not all(isinstance(d, str) for d in definition):
                    raise DataError(f"{path}: field 'Definition' must be a string or a non-empty list of strings")
                definition = "\n".join(definition)
            instances = get_field(obj, "Instances", list, str(path))
            if len(instances) > cap:
                info.dropped["over_max_instances_per_task"] += len(instances) - cap
            for k, inst in enumerate(instances[:cap]):
                w = f"{path}: Instances[{k}]"
                if not isinstance(inst, dict):
                    raise DataError(f"{w}: expected an object with 'input' and 'output'")
                inp = get_field(inst, "input", str, w)
                refs = get_references(inst, "output", w)
                if not in_bucket(refs[0], bucket):
                    info.dropped["outside_length_bucket"] += 1
                    continue
                iid = opt_field(inst, "id", str, w, f"{name}-{k}")
                out.append(Example(id=f"sni-{iid}", instruction=definition, input=inp,
                                   prompt=render_prompt(definition, inp), references=refs,
                                   meta={"topic": name, "source": w}))
        return out, info
