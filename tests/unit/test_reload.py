"""Which APIs a reload keeps, replaces, starts and stops: digests and the plan (pure)."""

from pathlib import Path

from inferd.reload import api_digests, plan_reload
from inferd.spec import load_project

HANDLER = "class Handler:\n    def __init__(self, config):\n        pass\n    def handle_get(self):\n        return {}\n"
CONFIG = """- name: a
  kind: RealtimeAPI
  handler: {type: python, path: a.py}
- name: b
  kind: RealtimeAPI
  handler: {type: python, path: b.py}
"""


def make(tmp_path: Path) -> Path:
    for name in ("a.py", "b.py", "shared.py"):
        (tmp_path / name).write_text(HANDLER)
    (tmp_path / "cortex.yaml").write_text(CONFIG)
    return tmp_path


def digests(project: Path) -> dict[str, str]:
    return api_digests(load_project(project))


def test_own_handler_change_replaces_only_that_api(tmp_path: Path) -> None:
    before = digests(make(tmp_path))
    (tmp_path / "a.py").write_text(HANDLER + "# v2\n")
    after = digests(tmp_path)
    assert after["a"] != before["a"] and after["b"] == before["b"]


def test_config_entry_change_replaces_only_that_api(tmp_path: Path) -> None:
    before = digests(make(tmp_path))
    (tmp_path / "cortex.yaml").write_text(CONFIG.replace("path: b.py}", "path: b.py, config: {k: 1}}"))
    after = digests(tmp_path)
    assert after["a"] == before["a"] and after["b"] != before["b"]


def test_shared_module_data_file_and_env_replace_every_api(tmp_path: Path) -> None:
    make(tmp_path)
    for change in (lambda: (tmp_path / "shared.py").write_text("X = 2\n"),
                   lambda: (tmp_path / "values.json").write_text("{}"),
                   lambda: (tmp_path / ".env").write_text("K=v\n")):
        before = digests(tmp_path)
        change()
        after = digests(tmp_path)
        assert after["a"] != before["a"] and after["b"] != before["b"]


def test_bytecode_and_dotfiles_do_not_count(tmp_path: Path) -> None:
    before = digests(make(tmp_path))
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref")
    assert digests(tmp_path) == before


def test_new_model_versions_are_the_workers_to_load_not_a_project_change(tmp_path: Path) -> None:
    make(tmp_path)
    models = HANDLER.replace("(self, config)", "(self, config, model_client)") + "    def load_model(self, path):\n        return path\n"
    (tmp_path / "a.py").write_text(models)
    (tmp_path / "models" / "iris" / "1").mkdir(parents=True)
    (tmp_path / "models" / "iris" / "1" / "weights.bin").write_bytes(b"1")
    (tmp_path / "cortex.yaml").write_text(CONFIG.replace("path: a.py}", "path: a.py, multi_model_reloading: {dir: models}}"))
    before = digests(tmp_path)
    (tmp_path / "models" / "iris" / "2").mkdir()
    (tmp_path / "models" / "iris" / "2" / "weights.bin").write_bytes(b"2")  # a new version: a's worker loads it
    (tmp_path / "models" / "tulip").mkdir()
    (tmp_path / "models" / "tulip" / "weights.bin").write_bytes(b"t")       # a new model in dir: likewise
    assert digests(tmp_path) == before
    (tmp_path / "labels.json").write_text("[]")  # a data file outside the models still replaces both
    after = digests(tmp_path)
    assert after["a"] != before["a"] and after["b"] != before["b"]


def test_plan() -> None:
    plan = plan_reload({"keep": "1", "change": "1", "gone": "1"}, {"keep": "1", "change": "2", "new": "1"})
    assert (plan.start, plan.replace, plan.stop, plan.keep) == (("new",), ("change",), ("gone",), ("keep",))
