"""The label of a class folder: the model's index of the class it names."""

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence


def _normal(name: str) -> str:
    return " ".join(name.replace("_", " ").replace("-", " ").lower().split())


def class_indices(
    classes: Sequence[str],
    class_names: Optional[Sequence[str]] = None,
    synsets: Optional[Sequence[str]] = None,
) -> Optional[Dict[str, int]]:
    r"""
    Each class folder's index among a model's outputs, when every folder
    names one of them: by synset (``n02102040``) or by class name, ignoring
    case, ``_`` and ``-`` (a name with aliases, ``"tench, Tinca tinca"``,
    matches each alias that no other class shares).

    Args:
        classes (sequence of str): the folders' names.
        class_names (sequence of str, optional): each output's class name.
        synsets (sequence of str, optional): each output's ImageNet synset.

    Returns:
        dict or None: folder name -> index; None if a folder names no class
        (the caller then falls back to the folders' order).

    Examples::

        >>> class_indices(["cat", "dog"], class_names=["dog", "cat"])
        {'cat': 1, 'dog': 0}
        >>> class_indices(["cat", "bird"], class_names=["dog", "cat"]) is None
        True
    """
    lookup: Dict[str, int] = {}
    ambiguous = set()
    for i, name in enumerate(class_names or []):
        for alias in [name] + name.split(","):
            key = _normal(alias)
            if key in lookup and lookup[key] != i:
                ambiguous.add(key)
            lookup.setdefault(key, i)
    for name in ambiguous - {_normal(n) for n in class_names or []}:
        del lookup[name]
    lookup.update({s: i for i, s in enumerate(synsets or [])})
    if not classes:
        return None
    found = {c: lookup.get(c, lookup.get(_normal(c))) for c in classes}
    if any(i is None for i in found.values()):
        return None
    return {c: int(i) for c, i in found.items()}  # type: ignore[arg-type]


def read_class_map(path: "str | Path") -> Dict[str, int]:
    """A JSON object of folder name -> class index (``{"cat": 281}``); a
    ValueError names the file and what is wrong."""
    try:
        mapping = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"class_map: cannot read {str(path)!r} as JSON ({e})")
    bad: List[str] = (
        [k for k, v in mapping.items() if not isinstance(v, int) or isinstance(v, bool) or v < 0]
        if isinstance(mapping, dict)
        else []
    )
    if not isinstance(mapping, dict) or bad:
        raise ValueError(
            f"class_map: {str(path)!r} must hold a JSON object of folder name -> "
            f"non-negative class index{f', got {bad[0]!r}' if bad else ''}"
        )
    return mapping
