"""docs/tutorial.ipynb runs top to bottom on the smoke config and the real MNIST files, so it cannot rot;
its committed outputs stay small."""

from __future__ import annotations

import nbclient
import nbformat

from tests.conftest import REPO_ROOT

NOTEBOOK = REPO_ROOT / "docs" / "tutorial.ipynb"


def test_the_committed_notebook_is_small_and_has_its_outputs():
  assert NOTEBOOK.stat().st_size < 2_000_000
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  code_cells = [c for c in notebook.cells if c.cell_type == "code"]
  assert code_cells and all(c.get("outputs") for c in code_cells[1:]), "executed, outputs kept"


def test_the_tutorial_runs_top_to_bottom(mnist_data_dir, mnist_manual_dir, tmp_path, monkeypatch):
  monkeypatch.setenv("TUTORIAL_DATA_DIR", mnist_data_dir)
  monkeypatch.setenv("MNIST_MANUAL_DIR", str(mnist_manual_dir))
  monkeypatch.setenv("TUTORIAL_WORKDIR", str(tmp_path / "run"))
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": str(REPO_ROOT)}}).execute()
  text = "\n".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                   for output in cell.get("outputs", []))
  assert "'test_count': 10000" in text and "accuracy" in text
  assert (tmp_path / "run" / "report" / "report.md").exists()
