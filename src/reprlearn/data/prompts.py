"""Prompt templates: how a class name becomes captions (labelled sets as image-text pairs, zero-shot)."""

from __future__ import annotations

import re

PROMPT_TEMPLATES = [
    "a photo of a {}.",
    "a picture of the {}.",
    "an image of a {}.",
    "a close-up photo of a {}.",
    "a blurry photo of the {}.",
    "a drawing of a {}.",
]
DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def fill_template(template: str, name: str) -> str:
    """``template.format(name)`` with the article before the name agreeing: 'an apple', 'a cat'."""
    before, _, after = template.partition("{}")
    m = re.search(r"(^|\s)(a|an|A|An) $", before)
    if m:
        a = m.group(2)
        vowel = name[:1].lower() in "aeiou"
        fixed = ("an" if vowel else "a") if a.islower() else ("An" if vowel else "A")
        before = before[: m.start(2)] + fixed + " "
    return f"{before}{name}{after.replace('{}', name)}"


def prompts_for(name: str, templates: list[str] | None = None) -> list[str]:
    return [fill_template(t, name) for t in (templates or PROMPT_TEMPLATES)]
