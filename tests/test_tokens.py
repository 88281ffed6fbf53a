import pytest
from transformers import AutoTokenizer

from bench.llm import BACKBONES, _package_file
from bench.tokens import fit_prompt


@pytest.fixture(scope="module")
def count():
    tokenizer = AutoTokenizer.from_pretrained(str(_package_file(*BACKBONES.get("minilm"))))
    return lambda text: len(tokenizer(text)["input_ids"])


def render(pieces):
    return "The user bought: " + "; ".join(pieces)


@pytest.mark.parametrize("budget", [5, 8, 13, 21, 34, 55, 400])
def test_budget_is_respected_exactly_and_most_recent_items_are_kept(count, budget):
    titles = [f"Movie number {n} part {n % 7}" for n in range(40)]  # most recent first
    fitted = fit_prompt(render, titles, count, budget)
    assert fitted.tokens == count(fitted.text)
    assert fitted.text == render(titles[:fitted.kept])         # a prefix of the recent-first list
    if fitted.kept:
        assert fitted.tokens <= budget
    if fitted.kept < len(titles):                               # one more item would not have fitted
        assert count(render(titles[:fitted.kept + 1])) > budget
    else:
        assert count(render(titles)) <= budget


def test_empty_history(count):
    fitted = fit_prompt(render, [], count, 50)
    assert fitted.kept == 0 and fitted.text == "The user bought: "
