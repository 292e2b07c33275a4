"""Where the data home is when RADPLAN_HOME is not set: the nearest .radplan/ up from the working directory."""

from __future__ import annotations

from radplan.settings import lake_dir, radplan_home


def test_the_environment_variable_wins(tmp_path):
    (tmp_path / ".radplan").mkdir()
    elsewhere = tmp_path / "elsewhere"
    assert radplan_home({"RADPLAN_HOME": str(elsewhere)}, cwd=tmp_path) == elsewhere.resolve()


def test_a_subfolder_of_the_clone_finds_the_clones_home(tmp_path):
    (tmp_path / ".radplan").mkdir()
    notebooks = tmp_path / "notebooks" / "drafts"
    notebooks.mkdir(parents=True)
    assert radplan_home({}, cwd=notebooks) == (tmp_path / ".radplan").resolve()
    assert radplan_home({}, cwd=tmp_path) == (tmp_path / ".radplan").resolve()


def test_the_nearest_home_wins(tmp_path):
    (tmp_path / ".radplan").mkdir()
    (tmp_path / "project" / ".radplan").mkdir(parents=True)
    assert radplan_home({}, cwd=tmp_path / "project") == (tmp_path / "project" / ".radplan").resolve()


def test_without_any_home_it_is_the_working_directorys(tmp_path):
    # tmp_path lies under the system temporary folder, where no parent holds a .radplan/.
    assert not any((folder / ".radplan").exists() for folder in tmp_path.parents)
    assert radplan_home({}, cwd=tmp_path) == tmp_path.resolve() / ".radplan"


def test_a_file_named_radplan_is_not_a_home(tmp_path):
    (tmp_path / ".radplan").write_text("not a folder")
    sub = tmp_path / "sub"
    sub.mkdir()
    assert radplan_home({}, cwd=sub) == sub.resolve() / ".radplan"


def test_lake_dir_follows_the_home(tmp_path, monkeypatch):
    (tmp_path / ".radplan").mkdir()
    (tmp_path / "notebooks").mkdir()
    monkeypatch.delenv("RADPLAN_HOME", raising=False)
    monkeypatch.chdir(tmp_path / "notebooks")
    assert lake_dir() == (tmp_path / ".radplan").resolve() / "lake"
