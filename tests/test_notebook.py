"""examples/quickstart.ipynb runs top to bottom on this machine (CPU: eager fp32) and shows what it says."""

import base64
import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from anchordetr_trt.eval import make_synthetic_coco

# The test extra installs both (make test); a bare machine (e.g. the GPU one) skips this module.
nbformat = pytest.importorskip("nbformat", reason="pip install -e '.[test]' (nbformat, nbclient)")
NotebookClient = pytest.importorskip(
    "nbclient", reason="pip install -e '.[test]' (nbformat, nbclient)"
).NotebookClient

NOTEBOOK = Path(__file__).parents[1] / "examples" / "quickstart.ipynb"
pytestmark = pytest.mark.slow  # one run of the whole notebook, about a minute


@pytest.fixture(scope="module")
def kernel_tmpdir(tmp_path_factory) -> Path:
    """The notebook kernel's temporary folder (TMPDIR), to see what the notebook leaves behind."""
    return tmp_path_factory.mktemp("kernel_tmp")


@pytest.fixture(scope="module")
def executed(tmp_path_factory, kernel_tmpdir) -> nbformat.NotebookNode:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    workdir = tmp_path_factory.mktemp("notebook")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("ANCHORDETR_CKPT", raising=False)  # the checks below are for the random-weights path
        patch.delenv("ANCHORDETR_VARIANT", raising=False)
        patch.setenv("TMPDIR", str(kernel_tmpdir))  # the kernel inherits it
        client = NotebookClient(
            notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
        )
        client.execute()  # a failing cell raises CellExecutionError with the cell's traceback
    return notebook


def _outputs(notebook: nbformat.NotebookNode, output_type: str) -> list:
    return [
        out
        for cell in notebook.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if out.output_type == output_type
    ]


def _summary(notebook: nbformat.NotebookNode) -> dict:
    lines = [line for out in _outputs(notebook, "stream") for line in out.text.splitlines()]
    [summary] = [json.loads(line.removeprefix("SUMMARY ")) for line in lines if line.startswith("SUMMARY ")]
    return summary


def test_every_cell_ran_without_error(executed):
    code_cells = [cell for cell in executed.cells if cell.cell_type == "code"]
    assert code_cells and all(cell.execution_count is not None for cell in code_cells)
    assert not _outputs(executed, "error")


def test_detections_and_evaluation_cover_the_synthetic_images(executed, tmp_path):
    summary = _summary(executed)
    if not torch.cuda.is_available():
        assert (summary["backend"], summary["precision"]) == ("eager", "fp32")
    # The notebook's dataset is make_synthetic_coco(num_images=4, seed=0): the same arguments give the same images.
    _, image_dir = make_synthetic_coco(tmp_path, num_images=4, seed=0)
    sizes = []
    for path in sorted(image_dir.iterdir()):
        with Image.open(path) as image:
            sizes.append([image.height, image.width])
    assert summary["random_weights"] and summary["num_images"] == 4 and summary["image_sizes"] == sizes
    assert summary["detections_per_image"] == [5, 5, 5, 5]
    for boxes in summary["boxes"]:
        assert len(boxes) == 5 and all(x0 <= x1 and y0 <= y1 for x0, y0, x1, y1 in boxes)
    assert summary["eval_num_images"] == 4 and 0.0 <= summary["AP"] <= 1.0
    assert any(
        line.startswith(f"AP {summary['AP']:.3f}")
        for out in _outputs(executed, "stream")
        for line in out.text.splitlines()
    )


def test_the_synthetic_data_is_removed_at_the_end(executed, kernel_tmpdir):
    assert not list(kernel_tmpdir.glob("anchordetr_quickstart_*"))


def test_the_first_image_is_drawn(executed):
    [figure] = [out for out in _outputs(executed, "display_data") if "image/png" in out.data]
    drawn = Image.open(io.BytesIO(base64.b64decode(figure.data["image/png"])))
    sizes = _summary(executed)["image_sizes"]
    assert drawn.size == (sizes[0][1], sizes[0][0]) and drawn.mode == "RGB"
