"""Class names: ImageNet's built-in list, a model's own names, and the map from a dataset's classes to a
model's outputs.

castream never replaces a model's head to fit a dataset. When a dataset's classes are not the model's
(a folder of photos of five ImageNet classes, explained by a 1,000-class model), :func:`label_map` maps
each dataset class to one of the model's outputs: by an explicit map, by ImageNet WordNet ids
(``n01440764``), or by class name (the model's own ``id2label``, or ImageNet's names for a 1,000-class
model). Without a map it is an error that says how to give one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path

from torch import nn

CLASS_MAP_FORM = (
    'a JSON object {"dataset class": model class index or name}, e.g. {"cat": 281, "coffee": "espresso"}'
)


@cache
def imagenet_classes() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """ImageNet-1k's ``(wnids, names)`` in the standard class order (sorted WordNet ids), as every
    ImageNet classifier of torchvision and timm indexes them."""
    rows = [
        line.split("\t")
        for line in (Path(__file__).with_name("imagenet_classes.tsv")).read_text().splitlines()
    ]
    return tuple(r[0] for r in rows), tuple(r[1] for r in rows)


def model_class_names(model: nn.Module, classes: int) -> list[str] | None:
    """The names of the model's ``classes`` outputs: a Hugging Face ``config.id2label`` (unless it is the
    placeholder ``LABEL_0, ...``), a ``class_names`` attribute, ImageNet's for 1,000 outputs, else None."""
    own = getattr(model, "class_names", None)
    if isinstance(own, Sequence) and not isinstance(own, str) and len(own) == classes:
        return [str(n) for n in own]
    config = getattr(model, "config", None)
    id2label = getattr(config, "id2label", None)
    if isinstance(id2label, Mapping) and len(id2label) == classes:
        names = [str(id2label[k]) for k in sorted(id2label, key=int)]
        if not all(n == f"LABEL_{i}" for i, n in enumerate(names)):
            return names
    if classes == 1000:
        return list(imagenet_classes()[1])
    return None


def read_class_map(path: str | os.PathLike) -> dict:
    """A class map file (:data:`CLASS_MAP_FORM`)."""
    try:
        value = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no class map file {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"class map {path} is not JSON ({err}); expected {CLASS_MAP_FORM}") from None
    if not isinstance(value, dict):
        raise ValueError(f"class map {path} holds a {type(value).__name__}; expected {CLASS_MAP_FORM}")
    return value


def _index(value, names: Sequence[str] | None, classes: int, what: str) -> int:
    """One model class: an index in ``[0, classes)`` or a name of ``names`` (case-insensitive, unique)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value < classes:
            raise ValueError(f"{what} maps to class {value}, outside the model's [0, {classes})")
        return value
    if not isinstance(value, str):
        raise ValueError(f"{what} maps to {value!r}; expected a class index or name")
    if value.isdigit():  # a CSV's integer labels are the model's class indices
        return _index(int(value), names, classes, what)
    wnids = imagenet_classes()[0] if classes == 1000 else ()
    if value in wnids:
        return wnids.index(value)
    found = [i for i, n in enumerate(names or ()) if n.lower() == value.strip().lower()]
    if len(found) != 1:
        reason = "several of the model's classes have" if found else "none of the model's classes has"
        raise ValueError(f"{what} maps to {value!r}, but {reason} that name")
    return found[0]


def label_map(
    dataset_classes: Sequence[str],
    model: nn.Module,
    classes: int,
    class_map: Mapping | None = None,
) -> list[int] | None:
    """The model output of each dataset class, or None when the dataset's labels already are the model's
    (as many classes, and no map given). With ``class_map`` every dataset class must be in it; without
    one, mismatched classes are mapped when every class name is an ImageNet WordNet id or one of the
    model's class names, else it is an error naming the remedies."""
    names = model_class_names(model, classes)
    if class_map is not None:
        missing = [c for c in dataset_classes if c not in class_map]
        if missing:
            raise ValueError(f"the class map has no entry for the dataset classes {missing[:5]}")
        return [_index(class_map[c], names, classes, f"dataset class {c!r}") for c in dataset_classes]
    if len(dataset_classes) == classes:
        return None
    try:
        return [_index(c, names, classes, f"dataset class {c!r}") for c in dataset_classes]
    except ValueError as err:
        shown = ", ".join(dataset_classes[:5]) + (", ..." if len(dataset_classes) > 5 else "")
        raise ValueError(
            f"the dataset has {len(dataset_classes)} classes ({shown}) but the model has {classes} outputs, "
            f"and they cannot be matched by name ({err}). castream never replaces a model's head: map the "
            f"dataset's classes to the model's with a class map ({CLASS_MAP_FORM}; --class-map FILE), name "
            "the class folders by ImageNet WordNet id or by the model's class names, or explain the "
            "predicted class (targets='predicted', --targets predicted). To fine-tune a new head, train "
            "a classifier"
        ) from None
