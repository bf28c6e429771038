"""The toy world: a procedurally generated instruction world with an exact checker.

Written for kdbench (no copied data). A seeded world has named creatures, each with a colour, a
home and a food. From it we generate:

- a pretraining text stream: facts about every creature, in several phrasings, so that a base
  model can learn the world's knowledge before it ever sees an instruction;
- instruction families, each with a known set of valid responses:
    fact     one right answer, knowledge from pretraining   "what color is the bako ?"
    reverse  one right answer, algorithmic                  "reverse the words" + "red cave plum"
    sort     one right answer, algorithmic                  "sort the numbers" + "five two four"
    count    one right answer, algorithmic                  "count the words" + "red cave"
    choose   four right answers with known probabilities (0.4/0.3/0.2/0.1) out of ten categories
             ("name a fruit for the bako"): one gold sample per prompt hides the distribution
    describe long form, three sentences                     "describe the bako"
    yesno    yes/no on any attribute, for calibration       "does the bako live in the cave ?"
- fixed seeded splits: train (gold responses), dev and test, and "unlabeled" (prompts without
  gold responses, meta['gold_hidden']). Test holds combinations never seen in training (held-out
  creature x question pairs, new word lists), except the in-distribution families (yes/no, and
  describe: its test prompts repeat training prompts). Dev/test prompts are distinct where the
  family has enough of them; `yesno_share` of every split (but unlabeled) is yes/no.

Why this world (issue 14: KD must be able to matter, every default metric must discriminate).
KD's premise is that the teacher knows more than the gold data shows the student; the levers:
- held-out knowledge: fact questions on held-out (creature, attribute) pairs are stated only in
  the pretraining stream; the teacher (more capacity, longer pretraining) recalls them, a small
  student hardly. Word-level KD on the gold train answers cannot pass that knowledge on: the
  teacher's distribution on a train answer is the gold answer. Only prompts without gold can:
- the "unlabeled" split: held-out fact questions and new inputs of the non-in-distribution
  families, without gold. An engine that gives these prompts to teacher-guided methods (teacher
  samples as SeqKD targets; on-policy rollouts scored by the teacher in MiniLLM/GKD/DistiLLM;
  word-level KD on teacher samples) and never to SFT makes the knowledge lever measurable.
  The engine does exactly that (config `use_unlabeled`, on by default; MethodContext
  `guided_examples` / `prompt_examples`), and strips the split's gold before training.
- multi-answer: `choose` has four modes per category; SFT sees one sampled gold answer per
  prompt, KD the teacher's whole distribution. This is where word-level KD differs from SFT
  with a small student (measured below).
- long form: `describe` (17 tokens with EOS) compounds errors; with `eval.exposure_prompts`
  covering enough of them, ExAccErr is stable (the first N test prompts cycle the families).
- capacity: the default student (gpt2-toy-xs, 18k body parameters) is far below the teacher
  (gpt2-toy-m, 0.8M).
Measured (benchmarks/sweep_world.py, `tiny` preset, 3 eval seeds x 720 test prompts): teacher
validity 93.9 at 1 torch thread, 97.0 at 2 (cls_acc 91.7 / 96.8 on 216 yes/no prompts). xs
students at 2000 steps, 3 training seeds (1 thread): sft 78.3 +- 0.6, kd 78.1 +- 2.0 -- no
measurable difference: word-level KD on the gold answers has nothing to add at convergence, and
its per-family effects cancel (it copies the teacher's weaker `sort`; before convergence it learns
`choose` much faster: 85-91 vs 71-75 at 1000 steps). The unlabeled lever is large where it acts:
SFT on gold plus teacher labels on the unlabeled prompts lifts held-out facts from 70 to 97 (one
seed), +0.7 overall. With the engine feeding those prompts to teacher-guided methods (default
run, 3 training x 3 eval seeds, fresh clone): kd - sft validity +3.75 [+1.44, +6.00], adjusted
p 0.001, held-out facts kd 95.9 vs sft 69.3 (the other families within 3 points either way). Known limits: the xs student answers yes/no near chance (cls_acc 50-59: the
comparison needs more capacity); Dist-4 saturates (99.4 for the base, 99.98-100 for trained
models: valid answers repeat no 4-gram); ExAccErr on 64 prompts still has an eval-seed std of
5-30 points (was up to 164 on 32 prompts).

`check(example, response)` says whether a response is valid and, for `choose`, which mode it is.
Everything is whitespace-tokenised words, so a word-level tokenizer covers the world exactly.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

COLORS = ["red", "blue", "green", "yellow", "black", "white", "brown", "pink"]
HOMES = ["cave", "lake", "hill", "forest", "river", "desert", "swamp", "valley"]
FOODS = ["plums", "seeds", "fish", "roots", "berries", "nuts", "leaves", "honey"]
NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"]
# choose-family categories: four modes each, with fixed probabilities (most likely first)
CATEGORIES = {
    "fruit": ["apple", "pear", "mango", "grape"],
    "tool": ["hammer", "saw", "drill", "axe"],
    "bird": ["crow", "owl", "hawk", "swan"],
    "boat": ["canoe", "raft", "ferry", "barge"],
    "tree": ["oak", "pine", "elm", "ash"],
    "drink": ["tea", "milk", "juice", "soda"],
    "flower": ["rose", "lily", "tulip", "daisy"],
    "metal": ["iron", "gold", "tin", "copper"],
    "game": ["chess", "dice", "cards", "darts"],
    "cloth": ["silk", "wool", "linen", "cotton"],
}
MODE_PROBS = [0.4, 0.3, 0.2, 0.1]
SYLLABLES_A = ["ba", "ko", "ti", "mu", "ze", "ra", "po", "lu", "fe", "gi", "no", "sa"]
SYLLABLES_B = ["ko", "ru", "mi", "ta", "lo", "ne", "pi", "sa", "du", "ve", "zo", "ga"]
FUNCTION_WORDS = (
    "the is lives in eats what color where does live eat reverse sort count name a an describe yes no "
    ". ? : , instruction input response words numbers of its likes home food has and it for"
).split()
FAMILIES = ("fact", "reverse", "sort", "count", "choose", "describe", "yesno")
LIST_WORDS = COLORS + HOMES + FOODS  # items for reverse / count
ATTRS = ("color", "home", "food")
IN_DISTRIBUTION = ("describe", "yesno")  # families whose test prompts may repeat training prompts
ATTR_VALUES = {"color": COLORS, "home": HOMES, "food": FOODS}


@dataclass
class ToyWorldConfig:
    seed: int = 0
    n_creatures: int = 24
    n_train: int = 4000  # instruction examples in the train split
    n_dev: int = 140
    n_test: int = 720  # 30% yes/no (216) + 72 per other family: 95% CI half-width ~2 points on validity
    held_out_fraction: float = 0.3  # creature x question pairs reserved for dev/test
    # Share of every split (but the unlabeled one) that is the yes/no calibration family: ECE and
    # cls_acc need a few hundred test prompts, and comparing a value with a fact needs training.
    yesno_share: float = 0.3
    # Prompts without gold responses (split "unlabeled"): held-out facts and new inputs that only a
    # teacher-guided method can learn from (teacher labels, or on-policy samples scored by the teacher).
    n_unlabeled: int = 1000
    min_list: int = 2
    max_list: int = 3
    families: list[str] = field(default_factory=lambda: list(FAMILIES))
    pretrain_docs: int = 3000

    def __post_init__(self) -> None:
        from .errors import ConfigError

        bad = [f for f in self.families if f not in FAMILIES]
        if bad:
            raise ConfigError(f"config key 'toy.families': unknown {bad}; valid: {list(FAMILIES)}")
        if not 4 <= self.n_creatures <= len(SYLLABLES_A) * len(SYLLABLES_B):
            raise ConfigError(f"config key 'toy.n_creatures': must be in [4, {len(SYLLABLES_A) * len(SYLLABLES_B)}]")
        if not 0 < self.held_out_fraction < 1:
            raise ConfigError("config key 'toy.held_out_fraction': must be in (0, 1)")
        if not 0 <= self.yesno_share < 1:
            raise ConfigError("config key 'toy.yesno_share': must be in [0, 1)")
        if not 1 <= self.min_list <= self.max_list <= 8:
            raise ConfigError("config key 'toy.min_list/max_list': need 1 <= min_list <= max_list <= 8")
        if self.n_unlabeled < 0:
            raise ConfigError("config key 'toy.n_unlabeled': must be >= 0")
        for k in ("n_train", "n_dev", "n_test", "pretrain_docs"):
            if getattr(self, k) < 1:
                raise ConfigError(f"config key 'toy.{k}': must be >= 1")


def render_prompt(instruction: str, input: str) -> str:
    """The toy world's compact prompt template (short, so tiny models train fast). The trailing
    space lets `prompt + response` tokenise the same way for every tokenizer."""
    if input:
        return f"instruction : {instruction} input : {input} response : "
    return f"instruction : {instruction} response : "


class ToyWorld:
    def __init__(self, config: ToyWorldConfig | None = None):
        self.config = config or ToyWorldConfig()
        rng = random.Random(self.config.seed)
        names = [a + b for a in SYLLABLES_A for b in SYLLABLES_B if a != b]
        rng.shuffle(names)
        self.creatures: dict[str, dict[str, str]] = {}
        for name in names[: self.config.n_creatures]:
            self.creatures[name] = {"color": rng.choice(COLORS), "home": rng.choice(HOMES), "food": rng.choice(FOODS)}
        # Held-out creature x family pairs: these questions never appear in the train split.
        self.held_out: set[tuple[str, str]] = set()
        for name in self.creatures:
            for fam in ("fact:color", "fact:home", "fact:food", "choose"):
                if rng.random() < self.config.held_out_fraction:
                    self.held_out.add((name, fam))

    # -- vocabulary and text -------------------------------------------------------------------
    def vocabulary(self) -> list[str]:
        words = list(FUNCTION_WORDS) + COLORS + HOMES + FOODS + NUMBERS + list(CATEGORIES)
        for modes in CATEGORIES.values():
            words += modes
        words += list(self.creatures)
        seen: dict[str, None] = {}
        for w in words:
            seen.setdefault(w, None)
        return list(seen)

    def fact_sentences(self, name: str) -> list[str]:
        c = self.creatures[name]
        return [f"the {name} is {c['color']} .", f"the {name} lives in the {c['home']} .", f"the {name} eats {c['food']} ."]

    def pretrain_texts(self) -> list[str]:
        """Documents of the world's text: each states a creature's facts in varied phrasings."""
        rng = random.Random(self.config.seed + 1)
        names = list(self.creatures)
        docs = []
        for _ in range(self.config.pretrain_docs):
            name = rng.choice(names)
            c = self.creatures[name]
            phrasings = [
                self.fact_sentences(name),
                [f"the color of the {name} is {c['color']} .", f"the home of the {name} is the {c['home']} .",
                 f"the food of the {name} is {c['food']} ."],
                [f"the {name} has color {c['color']} .", f"the {name} has home {c['home']} .",
                 f"the {name} likes {c['food']} ."],
            ]
            sents = [rng.choice(p) for p in zip(*phrasings)]
            rng.shuffle(sents)
            # Sometimes a second creature in the same document, so the model learns to bind names.
            if rng.random() < 0.3:
                sents.append(rng.choice(self.fact_sentences(rng.choice(names))))
            docs.append(" ".join(sents))
        return docs

    # -- instruction examples ------------------------------------------------------------------
    def make(self, family: str, rng: random.Random, split: str) -> dict[str, Any] | None:
        """One example of `family` for `split`, or None if this draw is not allowed in the split."""
        names = list(self.creatures)
        if family in ("fact", "describe", "yesno", "choose"):
            name = rng.choice(names)
            key = family
            attr = None
            truth = value = None
            if family == "fact":
                attr = rng.choice(["color", "home", "food"])
                key = f"fact:{attr}"
            if family == "describe":
                # The long-form family is in-distribution (a held-out description compounds three
                # recalls of pretraining facts: the teacher managed ~35%, students ~0%, which tells
                # no model apart); its test prompts repeat training prompts.
                held = split != "train"
            elif family == "yesno":
                # The calibration family is in-distribution: any held-out split of yes/no pairs lets
                # a model shortcut through the per-creature answer prior seen in training (measured:
                # held-out pairs were answered below chance, confidently). Test prompts may repeat
                # training prompts here; every other family holds out combinations.
                truth = rng.random() < 0.5
                attr = rng.choice(ATTRS)
                c0 = self.creatures[name][attr]
                value = c0 if truth else rng.choice([x for x in ATTR_VALUES[attr] if x != c0])
                held = split != "train"
            else:
                held = (name, key) in self.held_out
            if held != (split != "train"):
                return None
            c = self.creatures[name]
            if family == "fact":
                instr = {"color": f"what color is the {name} ?", "home": f"where does the {name} live ?",
                         "food": f"what does the {name} eat ?"}[attr]
                ref = self.fact_sentences(name)[["color", "home", "food"].index(attr)]
                return dict(instruction=instr, input="", references=[ref], meta={"family": family})
            if family == "describe":
                return dict(instruction=f"describe the {name}", input="",
                            references=[" ".join(self.fact_sentences(name))], meta={"family": family})
            if family == "yesno":
                instr = {"color": f"is the {name} {value} ?", "home": f"does the {name} live in the {value} ?",
                         "food": f"does the {name} eat {value} ?"}[attr]
                return dict(instruction=instr, input="", references=["yes" if truth else "no"],
                            meta={"family": family, "label_words": ["no", "yes"], "label": int(truth)})
            # choose: the answer distribution depends on the category only; the creature varies
            # the prompt so that held-out creature x category prompts exist.
            cat = rng.choice(list(CATEGORIES))
            modes = CATEGORIES[cat]
            art = "an" if cat[0] in "aeiou" else "a"
            return dict(instruction=f"name {art} {cat} for the {name}", input="",
                        references=list(modes), sample_probs=MODE_PROBS,
                        meta={"family": family, "modes": list(modes), "mode_probs": list(MODE_PROBS)})
        n = rng.randint(self.config.min_list, self.config.max_list)
        if family == "reverse":
            items = [rng.choice(LIST_WORDS) for _ in range(n)]
            return dict(instruction="reverse the words", input=" ".join(items), references=[" ".join(items[::-1])],
                        meta={"family": family})
        if family == "sort":
            items = rng.sample(NUMBERS, n)
            out = sorted(items, key=NUMBERS.index)
            return dict(instruction="sort the numbers", input=" ".join(items), references=[" ".join(out)],
                        meta={"family": family})
        if family == "count":
            n = rng.randint(1, 8)
            items = [rng.choice(LIST_WORDS) for _ in range(n)]
            return dict(instruction="count the words", input=" ".join(items), references=[NUMBERS[n - 1]],
                        meta={"family": family})
        raise ValueError(family)

    def split(self, split: str) -> list[dict[str, Any]]:
        """Examples of a split as dicts: instruction, input, prompt, references, target, meta."""
        cfg = self.config
        n = {"train": cfg.n_train, "dev": cfg.n_dev, "test": cfg.n_test, "unlabeled": cfg.n_unlabeled}[split]
        rng = random.Random(f"{cfg.seed}-{split}")
        out: list[dict[str, Any]] = []
        seen_inputs: set[str] = set()
        if split != "train":
            # list inputs seen in training are excluded from dev/test (held-out combinations)
            seen_inputs = {e["input"] for e in self.split("train") if e["input"]}
        if split == "unlabeled":
            # ... and the unlabeled pool never holds a test list input (held-out facts are shared
            # with the test split by design: they are what the teacher knows and the gold lacks)
            seen_inputs |= {e["input"] for e in self.split("test") if e["input"]}
        order = self._family_order(split, n)
        drawn: set[str] = set()
        redraws = 0
        i = 0
        tries = 0
        while len(out) < n:
            tries += 1
            if tries > 200 * n:
                raise RuntimeError(f"toy world: could not generate {n} {split} examples; relax the config")
            fam = order[i]
            ex = self.make(fam, rng, split)
            if ex is None or (ex["input"] and ex["input"] in seen_inputs):
                continue
            prompt = render_prompt(ex["instruction"], ex["input"])
            if split != "train" and prompt in drawn and redraws < 30:
                # evaluation prompts are distinct while the family has unused ones (a repeated
                # prompt adds samples, not information); after 30 redraws a repeat is accepted
                redraws += 1
                continue
            redraws = 0
            drawn.add(prompt)
            probs = ex.pop("sample_probs", None)
            # The training target of a multi-answer prompt is drawn from its mode distribution;
            # all modes remain references for evaluation.
            ex["target"] = rng.choices(ex["references"], weights=probs)[0] if probs else ex["references"][0]
            ex["prompt"] = prompt
            ex["id"] = f"toy-{split}-{len(out)}"
            if split == "unlabeled":
                ex["meta"]["gold_hidden"] = True
            out.append(ex)
            i += 1
        return out

    def _family_order(self, split: str, n: int) -> list[str]:
        """The family of each example slot: `yesno_share` of the slots (spread evenly) are yes/no, the
        rest cycle through the other families; the unlabeled pool has no yes/no."""
        fams = list(self.config.families)
        others = [f for f in fams if f != "yesno"]
        share = self.config.yesno_share
        if split == "unlabeled":  # in-distribution families have every prompt in the train split already
            pool = [f for f in fams if f not in IN_DISTRIBUTION] or others or fams
            return [pool[i % len(pool)] for i in range(n)]
        if "yesno" not in fams or not others:
            return [fams[i % len(fams)] for i in range(n)]
        out: list[str] = []
        j = 0
        for i in range(n):
            if int((i + 1) * share) > int(i * share):
                out.append("yesno")
            else:
                out.append(others[j % len(others)])
                j += 1
        return out

    # -- checking ------------------------------------------------------------------------------
    @staticmethod
    def check(references: list[str], meta: dict[str, Any], response: str) -> dict[str, Any]:
        """Exact validity of a response. For `choose`, also which mode it names."""
        resp = " ".join(response.split())
        fam = meta.get("family")
        if fam == "choose":
            modes = meta["modes"]
            mode = resp if resp in modes else None
            return {"valid": mode is not None, "mode": mode}
        return {"valid": resp in {" ".join(r.split()) for r in references}, "mode": None}
