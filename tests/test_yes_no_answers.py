"""scripts/yes_no_answers.py: what a run said to yes/no questions, beside its other questions."""

from conftest import load_script


def _rec(question: str, gold: str, prediction: str, f1: float = 0.0, abstained: bool = False) -> dict:
    return {"question": question, "gold": [gold], "prediction": prediction, "abstained": abstained, "answerable": True,
            "doc_id": "d", "scores": {"f1": f1}}


def test_breakdown_counts_what_was_said_to_each_gold_answer_and_the_other_questions_f1() -> None:
    s = load_script("yes_no_answers")
    texts = {"d": "The cat sat on the red mat. Paris is in France."}
    records = [_rec("Is the cat on the red mat?", "yes", "Yes [1]"),             # all its words in the story
               _rec("Did the dog bark loudly?", "yes", "No, it did not [1]"),  # none of its words in the story
               _rec("Is Paris in Spain?", "no", "No [1]"),
               _rec("Is the mat blue?", "no", "Nobody [1]"),                    # a span, not the word no
               _rec("Was it late?", "yes", "", abstained=True),
               _rec("Where is Paris?", "France", "France [1]", f1=1.0),
               _rec("What colour is the mat?", "red", "", abstained=True)]
    b = s.breakdown(records, texts)
    assert (b["questions"], b["yes_no"], b["other"]) == (7, 5, 2)
    assert b["other_f1"] == 0.5 and b["accuracy"] == 2 / 5
    assert b["table"]["yes->yes"] == 1 and b["table"]["yes->no"] == 1 and b["table"]["yes->abstained"] == 1
    assert b["table"]["no->no"] == 1 and b["table"]["no->span"] == 1 and b["table"]["no->yes"] == 0
    assert b["gold_yes_word_share"] == {"yes": (1.0, 1), "no": (0.0, 1)}
