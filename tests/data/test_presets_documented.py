"""The presets do what the README says they do."""

from __future__ import annotations

from pathlib import Path

from recsys.config import DataConfig
from recsys.data.presets import resolve_preprocessing

README = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")


def test_raw_keeps_every_interaction_of_users_with_at_least_five_as_the_readme_says() -> None:
    raw = resolve_preprocessing(DataConfig(preset="raw"))
    assert (raw.min_rating, raw.min_item_interactions, raw.min_user_interactions) == (None, 0, 5)
    assert "`raw` keeps every interaction (every rating, none dropped by rating or by item) of every user with at\nleast 5" in README


def test_the_tour_activates_the_environment_before_calling_bare_recsys() -> None:
    tour = README.split("## A tour", 1)[1]
    block = tour.split("```bash\n", 1)[1]
    assert block.startswith(". .venv/bin/activate")
