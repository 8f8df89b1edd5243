"""Tiny hand-written releases for the data tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys.data.dataset import PreparedDataset

# ml-1m format: user::item::rating::timestamp. User 1 has two ratings at t=100 (file order: 20 then 10).
TINY_RATINGS = """\
1::20::5::100
1::10::3::100
1::30::4::50
2::10::1::10
2::30::2::20
2::20::5::30
3::40::4::5
3::10::4::6
3::20::4::7
"""
TINY_MOVIES = """\
10::Toy Story (1995)::Animation|Children's|Comedy
20::Heat (1995)::Action|Crime|Thriller
30::Caf\xe9 au lait (1993)::Comedy
40::Untitled::Drama
"""


def write_tiny_ml1m(folder: Path, ratings: str = TINY_RATINGS, movies: str = TINY_MOVIES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.dat").write_text(ratings, encoding="latin-1")
    (folder / "movies.dat").write_text(movies, encoding="latin-1")
    return folder


@pytest.fixture
def tiny_ml1m(tmp_path: Path) -> Path:
    """A folder with a 9-rating ml-1m-format release (3 users, 4 movies, latin-1 titles)."""
    return write_tiny_ml1m(tmp_path / "ml-1m")


@pytest.fixture(scope="session")
def ml1m_raw(shared_data: Path) -> PreparedDataset:
    """ml-1m with the 'raw' preset, prepared once per session (about a second)."""
    from recsys.config import DataConfig
    from recsys.data.prepare import prepare_dataset

    return prepare_dataset(DataConfig(name="ml-1m", path=str(shared_data / "ml-1m"), preset="raw"))


@pytest.fixture(scope="session")
def ml1m_papers(shared_data: Path) -> PreparedDataset:
    """ml-1m with the 'papers' preset, prepared once per session."""
    from recsys.config import DataConfig
    from recsys.data.prepare import prepare_dataset

    return prepare_dataset(DataConfig(name="ml-1m", path=str(shared_data / "ml-1m"), preset="papers"))
