"""The open-ended task closest to the paper's creative protocol (arXiv 2604.24927 §5: Gutenberg /
BookCorpus stories split in the middle, the last 32 words of the first half as the prompt, no chat
template, 512-token continuations, 16 samples each).

No pip-installable package in this project's index ships public-domain story text offline (the
Gutenberg clients download at run time; the fairy-tale skills fetch their texts), so
`data/stories.jsonl` holds 30 story first halves written for this project in the manner of
19th-century public-domain fiction (40–75 words each). The prompt is, as in the paper, the last
PROMPT_WORDS words of the first half, continued as plain text (no chat template).
"""

from __future__ import annotations

import json
from pathlib import Path

STORIES_FILE = Path(__file__).with_name("data") / "stories.jsonl"
PROMPT_WORDS = 32  # the paper's: the last 32 words of the story's first half
STORIES = "stories"  # the name `eval diversity --prompts` takes


def story_first_halves() -> list[dict[str, str]]:
    """[{"title", "first_half"}] from the bundled file."""
    return [json.loads(line) for line in STORIES_FILE.read_text().splitlines() if line.strip()]


def story_prompt(first_half: str, words: int = PROMPT_WORDS) -> str:
    """The last `words` words of the first half, joined by single spaces."""
    if not 1 <= words <= 512:
        raise ValueError(f"words must be in [1, 512], got {words}")
    return " ".join(first_half.split()[-words:])


def story_prompts(words: int = PROMPT_WORDS) -> list[str]:
    """The bundled stories' prompts, in file order."""
    return [story_prompt(s["first_half"], words) for s in story_first_halves()]
