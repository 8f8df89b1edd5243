"""data_scripts/fetch_movielens.py with local copies only (tests never download)."""

from __future__ import annotations

import importlib.util
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

from recsys.errors import DataError

from .conftest import write_tiny_ml1m

SCRIPT = Path(__file__).resolve().parents[2] / "data_scripts" / "fetch_movielens.py"


@pytest.fixture(scope="module")
def fetch_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fetch_movielens", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_local_folder_is_verified_and_installed(fetch_script: ModuleType, shared_data: Path, tmp_path: Path) -> None:
    folder = fetch_script.fetch("ml-100k", str(shared_data / "ml-100k"), str(tmp_path))
    assert folder == tmp_path / "raw" / "ml-100k"
    assert sorted(p.name for p in folder.iterdir()) == ["README", "u.data.gz", "u.item"]


def test_local_zip_then_prepare(fetch_script: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    archive = tmp_path / "ml-25m.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(
            "ml-25m/ratings.csv", "userId,movieId,rating,timestamp\n" + "".join(f"1,{i},4.0,{i}\n" for i in range(5))
        )
        zf.writestr("ml-25m/movies.csv", "movieId,title,genres\n1,A (2000),Drama\n")
    assert fetch_script.main(["ml-25m", "--from", str(archive), "--cache-dir", str(tmp_path / "c")]) == 0
    assert "prepared: 1 users, 5 items, 5 interactions" in capsys.readouterr().out


def test_checksum_mismatch_keeps_the_old_install(fetch_script: ModuleType, tmp_path: Path) -> None:
    tiny = write_tiny_ml1m(tmp_path / "tiny")
    with pytest.raises(
        DataError, match=r"ratings\.dat: checksum mismatch: md5 [0-9a-f]{32}, expected a89aa3591bc97d6d4e0c89459ff39362"
    ):
        fetch_script.fetch("ml-1m", str(tiny), str(tmp_path / "c"))
    assert not (tmp_path / "c" / "raw" / "ml-1m").exists()
    with pytest.raises(DataError, match="dataset 'ml-5m' is unknown"):
        fetch_script.fetch("ml-5m", str(tiny), str(tmp_path / "c"))
