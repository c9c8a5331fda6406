"""Zero-shot classification tasks of a held-out pair set, and their scores with a method's text tower.

A task is a set of images with true labels and, per class, prompts ("a picture of a
circle."); the classifier is the mean unit text embedding of each class's prompts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch

from ..data.pairset import PairSet
from ..data.prompts import PROMPT_TEMPLATES, fill_template
from ..data.scenes import ZERO_SHOT_TEMPLATES
from ..errors import fail
from .image_text import zero_shot_accuracy, zero_shot_classifier


class ZeroShotTask(NamedTuple):
    """One held-out classification task: images ``index`` of the set, true ``labels``, ``class_names``,
    and the prompt ``templates`` (``{}`` for the class name)."""

    name: str
    index: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    templates: list[str]

    def prompts(self) -> list[list[str]]:
        """For each class, its prompts, grammatical ('an orange object', not 'a orange object')."""
        return [[fill_template(t, c) for t in self.templates] for c in self.class_names]


def zero_shot_tasks(pairs: PairSet) -> list[ZeroShotTask]:
    """Held-out zero-shot classification tasks of a pair set.

    scenes: "shape" and "colour" of the single-object images (prompts name only that attribute,
    see :data:`reprlearn.data.scenes.ZERO_SHOT_TEMPLATES`). A labelled set (digits, cifar10 ...):
    one task "class" over all images with :data:`reprlearn.data.prompts.PROMPT_TEMPLATES`.
    Otherwise: none.
    """
    attrs, names = pairs.attributes, pairs.attribute_names
    if attrs is not None and names and "n_objects" in attrs:
        index = np.flatnonzero(attrs["n_objects"] == 1)
        if not len(index):
            return []
        return [ZeroShotTask(task, index, attrs[task][index], list(names[task]), ZERO_SHOT_TEMPLATES[task])
                for task in ("shape", "colour")]
    labels, classes = pairs.images.labels, pairs.images.class_names
    if labels is not None and classes:
        return [ZeroShotTask("class", np.arange(len(labels)), labels, list(classes), PROMPT_TEMPLATES)]
    return []


def class_task(pairs: PairSet, classes: str | list[str] | None, templates: list[str] | None) -> ZeroShotTask:
    """The task "class" over every image of ``pairs`` with the user's class names and templates."""
    names = class_list(classes) if classes is not None else pairs.images.class_names
    labels = pairs.images.labels
    if labels is None or not names:
        raise fail(f"{pairs.name} has no class labels; zero-shot with --classes needs labelled images "
                   "(KEY.cls members, class sub-folders, digits, cifar10)")
    if labels.max() >= len(names):
        raise fail(f"{pairs.name} has labels up to {labels.max()} but only {len(names)} class names were given")
    chosen = templates or PROMPT_TEMPLATES
    for t in chosen:
        if "{}" not in t:
            raise fail(f"prompt template {t!r} has no {{}} for the class name")
    return ZeroShotTask("class", np.arange(len(labels)), labels, list(names), list(chosen))


def class_list(classes: str | list[str]) -> list[str]:
    """Class names from a list, a file with one name a line, or a comma list."""
    if isinstance(classes, (list, tuple)):
        names = [str(c).strip() for c in classes]
    elif Path(classes).is_file():
        names = [line.strip() for line in Path(classes).read_text().splitlines() if line.strip()]
    else:
        names = [c.strip() for c in str(classes).split(",")]
    if not names or not all(names):
        raise fail(f"--classes {classes!r} names no classes (or has an empty one); give a file with one name "
                   "per line or a comma list")
    return names


def zero_shot_scores(embed_texts: Callable[[list[str]], torch.Tensor], image_emb: torch.Tensor,
                     tasks: list[ZeroShotTask]) -> dict:
    """Top-1/top-5 of each task with its chance level; their means as ``zeroshot_top1`` /
    ``zeroshot_chance`` (None when there is no task). ``embed_texts`` gives unit embeddings."""
    scores: dict[str, dict] = {}
    for task in tasks:
        classifier = zero_shot_classifier(lambda t: embed_texts(t).cpu(), task.prompts())
        acc = zero_shot_accuracy(image_emb[torch.from_numpy(task.index)], classifier, torch.from_numpy(task.labels))
        n_classes = len(task.class_names)
        scores[task.name] = {**acc, "chance": 1 / n_classes, "top5_chance": min(5, n_classes) / n_classes,
                             "images": len(task.index), "classes": n_classes}
    means = {key: float(np.mean([t[key] for t in scores.values()])) if scores else None for key in ("top1", "chance")}
    return {"zeroshot_tasks": scores, "zeroshot_top1": means["top1"], "zeroshot_chance": means["chance"]}
