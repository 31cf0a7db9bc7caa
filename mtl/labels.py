"""Class names of the two classification tasks, and the parsing of label strings.

The order of PATTERNS and INTENSITIES fixes the class indices everywhere (model outputs,
confusion matrices, Parquet columns), so never reorder them.
"""

from __future__ import annotations

PATTERNS = ("homogeneous", "speckled", "nucleolar", "centromere", "golgi", "numem", "mitsp")
INTENSITIES = ("intermediate", "positive")

# Spellings met in label tables; the keys are already lower-case and stripped.
_PATTERN_SYNONYMS = {
    "nuclear membrane": "numem",
    "nuclear_membrane": "numem",
    "mitotic spindle": "mitsp",
    "mitotic_spindle": "mitsp",
}


def parse_pattern(text: str) -> str:
    """'Homogeneous ' -> 'homogeneous'; raises ValueError on an unknown pattern."""
    key = " ".join(str(text).strip().lower().split())
    key = _PATTERN_SYNONYMS.get(key, key)
    if key not in PATTERNS:
        raise ValueError(f"unknown pattern {text!r}; expected one of {', '.join(PATTERNS)}")
    return key


def parse_intensity(text: str) -> str:
    """'Positive' -> 'positive'; raises ValueError on an unknown intensity."""
    key = str(text).strip().lower()
    if key not in INTENSITIES:
        raise ValueError(f"unknown intensity {text!r}; expected one of {', '.join(INTENSITIES)}")
    return key
