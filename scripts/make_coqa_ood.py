#!/usr/bin/env python3
"""Build an out-of-domain QA evaluation set from CoQA, as shipped in BIG-bench 1.0.0.

The BIG-bench task ``coqa_conversational_question_answering`` carries the CoQA
test set (``coqa.test.json``, "CoQA Test Set 1.0": 700 stories, 100 from each of
seven domains, about 15 conversational questions per story) inside the
``bigbench-1.0.0`` source package on PyPI, the same package that
``scripts/make_corpus.py`` reads Disfl-QA from.  This script opens that tarball
with :mod:`tarfile` (bigbench is never installed or imported), picks short
stories from domains other than Wikipedia (the bundled training corpus is
Wikipedia), keeps only questions that make sense without the dialogue history,
and writes them in the tutorials' format.

A question is kept when

* it reads on its own: no pronoun, demonstrative or follow-up word that could
  point back to an earlier turn (``he``, ``it``, ``that``, ``else``, ``also``,
  ``next``, ``someone`` ...), no opening conjunction, a verb (not a fragment such
  as "How many members of Congress?"), at least four words and two content words,
  one of which occurs in the story; and it is not in :data:`EXCLUDED_TURNS` (the
  few that pass these tests but still lean on the dialogue, found by reading the
  output);
* its answer is grounded: a rationale span in the story, no annotator answered
  "unknown", and the annotators agree (yes/no: every annotator gave the same
  yes/no; free-form: another annotator's answer reaches token F1 >= 0.5 with the
  chosen one);
* a free-form answer shares a content word with the story (or occurs in it).

The free-form ``answer`` is the consensus one: the gold answer (CoQA's main one
or an additional annotator's) with the highest token F1 to the others, the main
one on ties; ``answers`` lists every distinct gold, the consensus one first.  A
yes/no ``answer`` is ``"yes"`` or ``"no"``.

Selection is seeded and deterministic: per domain, the stories (sorted by id) are
shuffled with ``random.Random(seed)`` and the first ``--stories-per-domain`` that
qualify taken (at most ``--max-words`` words, at least ``--min-questions`` kept
questions, one of them yes/no unless ``--no-require-yes-no``).  Per story, a
generator seeded with ``f"{seed}:{story id}"`` draws ``--yes-no-per-story``
yes/no questions, then free-form ones up to ``--questions-per-story`` (more yes/no
ones only when the free-form ones run out); the picks keep CoQA's turn order.

Output (UTF-8, byte-identical on re-runs)::

    <output>/qa.json           JSON array of {"id", "doc_id", "domain", "question",
                               "answer", "answers", "answer_type", "rationale",
                               "context", "coqa_story_id", "coqa_turn_id"}
    <output>/documents.jsonl   {"id", "title", "text", "domain"}, one per story

Usage::

    pip download --no-deps bigbench==1.0.0 -d /tmp/bb
    python scripts/make_coqa_ood.py --tarball /tmp/bb/bigbench-1.0.0.tar.gz

Only the Python standard library is used.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import string
import sys
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

TARBALL_NAME = "bigbench-1.0.0.tar.gz"
MEMBER_SUFFIX = "bigbench/benchmark_tasks/coqa_conversational_question_answering/coqa.test.json"
#: sha256 of ``coqa.test.json`` inside bigbench-1.0.0.tar.gz (sha256 of the
#: tarball: 1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2).
MEMBER_SHA256 = "45626f049dc47248677ae43ee412fc3b8b8d1443323151fd6dc8d55c2188ff31"

#: CoQA's domain names (``source``) and what they are.
DOMAINS = {
    "cnn": "news (CNN)",
    "gutenberg": "literature (Project Gutenberg)",
    "mctest": "children's stories (MCTest)",
    "race": "middle/high-school English exams (RACE)",
    "science": "science textbook passages (SciQ)",
    "reddit": "fiction written on Reddit (WritingPrompts)",
    "wikipedia": "Wikipedia",
}
DEFAULT_DOMAINS = ("cnn", "gutenberg", "mctest", "race", "science")

DOWNLOAD_HINT = (
    "Download the BIG-bench 1.0.0 source package first, e.g.\n"
    "    pip download --no-deps bigbench==1.0.0 -d /tmp/bb\n"
    "and then run\n"
    "    python scripts/make_coqa_ood.py --tarball /tmp/bb/bigbench-1.0.0.tar.gz"
)

# --------------------------------------------------------------------------
# Question and answer filters
# --------------------------------------------------------------------------

#: Words that may refer back to an earlier turn of the conversation.
CONTEXT_WORDS = frozenset(
    """
    he she it they him her them his hers its their theirs himself herself itself
    themselves this that these those there then one ones else also too other
    others another same again both either neither former latter next later
    afterwards before after previous previously such something someone somebody
    """.split()
)
#: Turns that pass the filters but still lean on the conversation, found by reading
#: the output: (CoQA story id, turn id) -> why.
EXCLUDED_TURNS = {
    ("3nc5l260mom9579b3nffiyo4p7bfoz", 15): "how would you be more specific? (than the previous answer)",
    ("3j2uybxqqlcsjxoh09a0yrf9y3i06d", 15): "what percent was the loss? (of the forest discussed before)",
    ("3g5w44veu7iwtgkrgft4t277654gku", 3): "What is for part-time jobs? (the minimum age, asked before)",
    ("3w8cv64qj2zqcgwbwokxot5sagz9hw", 4): "Which kind brought the top money? (kind of tobacco)",
    ("3qjoxow4xjrtzqo3vwgw8cezi42meq", 6): "are new forms being discovered? (forms of energy)",
    ("30h4udglt2ixwhdt4aw72od3wb7pmh", 8): "Is each type necessary? (each type of joint movement)",
    ("3qjoxow4xjrtzqo3vwgw8cezi42meq", 10): "is our use slowing? (our use of energy)",
    ("30h4udglt2ixwhdt4aw72od3wb7pmh", 5): "Are the types often part of a pair? (types of joint movement)",
}
#: A question opening with one of these continues the previous one.
CONTINUATION_OPENERS = frozenset("and but so or also then because".split())
#: Openers of polar (yes/no) questions.
POLAR_OPENERS = frozenset(
    """
    is are was were am do does did can could will would shall should has have had
    may might must isn't aren't wasn't weren't don't doesn't didn't can't couldn't
    won't wouldn't hasn't haven't hadn't shouldn't
    """.split()
)
STOPWORDS = frozenset(
    """
    a an the of to in on at by for with from about as into over under is are was
    were be been being am do does did done have has had can could will would shall
    should may might must what who whom whose which when where why how kind sort
    type name named many much long old i you we me us my your our not no yes
    did get got go went make made say said tell told
    """.split()
) | CONTEXT_WORDS
#: Verbs that carry a question without an auxiliary (``Who won the gold?``).
IRREGULAR_VERBS = frozenset(
    """
    ate became began bit blew bought broke brought built burnt caught chose came cost
    cut dealt did drew drank drove dug fed fell felt fought found fled flew forgot
    froze gave got grew hid hit held hung heard kept knew laid led left lent let lay
    lit lost made meant met paid put quit ran rang read rode rose said sang sank sat
    saw sent set shook shot shut slept slid sold sought spent spoke spun split spread
    stood stole stuck struck swam swept swung taught tore told thought threw took
    understood woke wore won wrote
    """.split()
) | POLAR_OPENERS | frozenset("be been being go goes make makes say says get gets".split())
#: Words after which a plural noun, not a verb, ends in -s (``How many members``).
QUANTIFIERS = frozenset("many much few several some all".split())

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("\u2019", "'"))


def content_words(text: str) -> set[str]:
    return {w for w in words(text) if w not in STOPWORDS and len(w) > 2}


def normalize_answer(text: str) -> str:
    """SQuAD/CoQA normalisation: lower case, no punctuation, articles or extra spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(a: str, b: str) -> float:
    ta, tb = normalize_answer(a).split(), normalize_answer(b).split()
    common = Counter(ta) & Counter(tb)
    same = sum(common.values())
    if not ta or not tb or same == 0:
        return float(ta == tb)
    precision, recall = same / len(ta), same / len(tb)
    return 2 * precision * recall / (precision + recall)


def yes_no(text: str) -> str | None:
    """``"yes"``/``"no"`` when the answer is (or opens with) one, else None."""
    first = normalize_answer(text).split()[:1]
    return first[0] if first and first[0] in ("yes", "no") else None


def has_verb(toks: list[str]) -> bool:
    """Rough test that a question is a sentence, not a fragment (``How many members of Congress?``)."""
    for i, t in enumerate(toks):
        if t in IRREGULAR_VERBS or (t.endswith("ed") and len(t) > 4):
            return True
        if "'" in t and t.split("'", 1)[1] in ("s", "re", "ve", "d", "ll"):
            return True  # what's, who's, they're ...
        # present tense after the wh-word or a wh-word and its noun: "What causes", "What law pertains"
        if t.endswith("s") and not t.endswith("ss") and i in (1, 2) and (i == 1 or toks[i - 1] not in QUANTIFIERS):
            if i == 1 or toks[0] in ("what", "which", "whose"):
                return True
    return False


def self_contained(question: str, story_words: set[str]) -> bool:
    """True when the question reads on its own, without the earlier turns."""
    toks = words(question)
    if len(toks) < 4 or toks[0] in CONTINUATION_OPENERS:
        return False
    if any(t in CONTEXT_WORDS for t in toks):
        return False
    if any(t.endswith("'s") and t[:-2] in CONTEXT_WORDS for t in toks):
        return False
    if not has_verb(toks):
        return False
    content = content_words(question)
    return len(content) >= 2 and bool(content & story_words)


def gold_answers(story: dict, turn_index: int) -> list[str]:
    """The main answer, then the additional annotators' answers for the same turn."""
    answers = [story["answers"][turn_index]["input_text"]]
    turn_id = story["answers"][turn_index]["turn_id"]
    for extra in (story.get("additional_answers") or {}).values():
        for ans in extra:
            if ans.get("turn_id") == turn_id:
                answers.append(ans["input_text"])
    return [a.strip() for a in answers]


def unique(answers: list[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for a in answers:
        key = normalize_answer(a)
        if key and key not in seen:
            seen.add(key)
            out.append(a)
    return out


def candidate(story: dict, turn_index: int, story_words: set[str]) -> dict[str, Any] | None:
    """The QA record for one turn, or None when it is not self-contained or not grounded."""
    q = story["questions"][turn_index]
    a = story["answers"][turn_index]
    if q["turn_id"] != a["turn_id"]:
        return None
    if (story["id"], q["turn_id"]) in EXCLUDED_TURNS:
        return None
    question = " ".join(q["input_text"].split())
    if not self_contained(question, story_words):
        return None
    golds = gold_answers(story, turn_index)
    if any(normalize_answer(g) in {"unknown", "unknow"} or not normalize_answer(g) for g in golds):
        return None
    rationale = " ".join(a.get("span_text", "").split())
    if a.get("span_start", -1) < 0 or not rationale:
        return None
    polar = words(question)[0] in POLAR_OPENERS
    verdicts = [yes_no(g) for g in golds]
    if polar and verdicts[0] is not None:
        if len(set(verdicts)) != 1:
            return None  # annotators disagree, or some gave a free-form answer
        answer_type, answer, answers = "yes/no", verdicts[0], [verdicts[0]]
    elif any(v is not None for v in verdicts):
        return None  # a yes/no answer to a question that is not polar
    else:
        golds = [" ".join(g.split()) for g in golds]
        # The consensus answer: the gold closest (token F1) to the others, CoQA's main
        # answer on ties; a lone main answer such as "in a big" yields to "in a big city".
        agreement = [sum(token_f1(g, h) for j, h in enumerate(golds) if j != i) for i, g in enumerate(golds)]
        best = max(range(len(golds)), key=lambda i: (agreement[i], -i))
        answer = golds[best]
        if not content_words(answer) & story_words and normalize_answer(answer) not in normalize_answer(story["story"]):
            return None
        if len(golds) > 1 and max(token_f1(answer, g) for j, g in enumerate(golds) if j != best) < 0.5:
            return None
        answer_type, answers = "free-form", unique([answer] + golds)
    return {
        "question": question,
        "answer": answer,
        "answers": answers,
        "answer_type": answer_type,
        "rationale": rationale,
        "coqa_turn_id": q["turn_id"],
    }


# --------------------------------------------------------------------------
# Reading and writing
# --------------------------------------------------------------------------


def find_tarball(path: str | None) -> Path:
    if path:
        p = Path(path)
        if not p.is_file():
            sys.exit(f"error: {p} does not exist.\n{DOWNLOAD_HINT}")
        return p
    for p in (Path(TARBALL_NAME), Path("/tmp/bb") / TARBALL_NAME):
        if p.is_file():
            return p
    sys.exit(f"error: {TARBALL_NAME} not found in ./ or /tmp/bb/.\n{DOWNLOAD_HINT}")


def read_member(tarball: Path) -> bytes:
    with tarfile.open(tarball, "r:gz") as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(MEMBER_SUFFIX):
                handle = tar.extractfile(member)
                assert handle is not None
                return handle.read()
    sys.exit(f"error: {tarball} has no member ending in {MEMBER_SUFFIX}")


def story_title(story: dict) -> str:
    """A short title: book and chapter for Gutenberg, else the story's first words."""
    if story["source"] == "gutenberg":
        # data/gutenberg/txt/<Author>___<Book>.txt/<CHAPTER ...>_<hash>
        parts = story["filename"].split("/")
        if len(parts) >= 2 and "___" in parts[-2]:
            author, book = parts[-2].removesuffix(".txt").split("___", 1)
            chapter = parts[-1].rsplit("_", 1)[0].strip()
            return f"{book} ({author}), {chapter}".strip(", ")
    first = story["story"].split()[:8]
    return " ".join(first) + (" ..." if len(story["story"].split()) > 8 else "")


def doc_id(story: dict) -> str:
    return f"coqa-{story['source']}-{story['id']}"


def select(data: list[dict], domains: list[str], stories_per_domain: int, questions_per_story: int,
           yes_no_per_story: int, require_yes_no: bool, min_questions: int, max_words: int,
           seed: int) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    qa: list[dict] = []
    docs: list[dict] = []
    for domain in domains:
        stories = sorted((s for s in data if s["source"] == domain), key=lambda s: s["id"])
        rng.shuffle(stories)
        taken = 0
        for story in stories:
            if taken == stories_per_domain:
                break
            text = re.sub(r"[ \t]+\n", "\n", story["story"]).strip()
            if len(text.split()) > max_words:
                continue
            story_words = content_words(text)
            cands = [c for i in range(len(story["questions"])) if (c := candidate(story, i, story_words))]
            # One question per distinct wording (CoQA sometimes repeats a question).
            by_wording: dict[str, dict] = {}
            for c in cands:
                by_wording.setdefault(normalize_answer(c["question"]), c)
            cands = list(by_wording.values())
            if len(cands) < min_questions:
                continue
            if require_yes_no and not any(c["answer_type"] == "yes/no" for c in cands):
                continue
            # Each story draws its questions from its own generator, so that a change to one
            # story's candidates leaves the others' picks as they were.
            story_rng = random.Random(f"{seed}:{story['id']}")
            polar = [c for c in cands if c["answer_type"] == "yes/no"]
            free = [c for c in cands if c["answer_type"] == "free-form"]
            story_rng.shuffle(polar)
            story_rng.shuffle(free)
            # Then free-form questions; more yes/no ones only when those run out.
            picked = polar[:yes_no_per_story]
            rest = free + polar[yes_no_per_story:]
            picked += rest[: questions_per_story - len(picked)]
            picked.sort(key=lambda c: c["coqa_turn_id"])
            did = doc_id(story)
            docs.append({"id": did, "title": story_title(story), "text": text, "domain": domain})
            for c in picked:
                qa.append({
                    "id": f"{did}-t{c['coqa_turn_id']:02d}",
                    "doc_id": did,
                    "domain": domain,
                    "question": c["question"],
                    "answer": c["answer"],
                    "answers": c["answers"],
                    "answer_type": c["answer_type"],
                    "rationale": c["rationale"],
                    "context": text,
                    "coqa_story_id": story["id"],
                    "coqa_turn_id": c["coqa_turn_id"],
                })
            taken += 1
        if taken < stories_per_domain:
            print(f"warning: {domain}: only {taken} stories qualify", file=sys.stderr)
    return qa, docs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tarball", help=f"path to {TARBALL_NAME} (default: ./ or /tmp/bb/)")
    parser.add_argument("--output", default="corpus/coqa_ood", help="output folder (default: %(default)s)")
    parser.add_argument("--domains", default=",".join(DEFAULT_DOMAINS),
                        help=f"comma-separated CoQA domains, of {', '.join(DOMAINS)} (default: %(default)s)")
    parser.add_argument("--stories-per-domain", type=int, default=12, help="(default: %(default)s)")
    parser.add_argument("--questions-per-story", type=int, default=4, help="at most (default: %(default)s)")
    parser.add_argument("--yes-no-per-story", type=int, default=1,
                        help="yes/no questions picked first from each story, when it has them (default: %(default)s)")
    parser.add_argument("--require-yes-no", action=argparse.BooleanOptionalAction, default=True,
                        help="take only stories with at least one kept yes/no question (default: %(default)s)")
    parser.add_argument("--min-questions", type=int, default=3,
                        help="skip stories with fewer kept questions (default: %(default)s)")
    parser.add_argument("--max-words", type=int, default=400, help="skip longer stories (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="selection seed (default: %(default)s)")
    args = parser.parse_args(argv)

    domains = [d.strip() for d in args.domains.split(",") if d.strip()]
    unknown = [d for d in domains if d not in DOMAINS]
    if unknown:
        parser.error(f"unknown domain(s) {unknown}; choose from {sorted(DOMAINS)}")

    raw = read_member(find_tarball(args.tarball))
    digest = hashlib.sha256(raw).hexdigest()
    if digest != MEMBER_SHA256:
        print(f"warning: coqa.test.json has sha256 {digest}, expected {MEMBER_SHA256}: "
              "the output will differ from the committed files", file=sys.stderr)
    data = json.loads(raw)["data"]

    qa, docs = select(data, domains, args.stories_per_domain, args.questions_per_story,
                      args.yes_no_per_story, args.require_yes_no, args.min_questions, args.max_words, args.seed)

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "qa.json").write_text(json.dumps(qa, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    with open(out / "documents.jsonl", "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d, ensure_ascii=False, sort_keys=True) + "\n")

    per_domain = Counter(r["domain"] for r in qa)
    polar = Counter(r["domain"] for r in qa if r["answer_type"] == "yes/no")
    print(f"{len(docs)} stories, {len(qa)} questions, {sum(polar.values())} yes/no "
          f"({100 * sum(polar.values()) / max(1, len(qa)):.1f}%) -> {out}/")
    for d in domains:
        n_docs = sum(1 for doc in docs if doc["domain"] == d)
        print(f"  {d:10s} {n_docs:3d} stories {per_domain[d]:4d} questions {polar[d]:3d} yes/no")
    return 0


if __name__ == "__main__":
    sys.exit(main())
