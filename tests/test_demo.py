"""The demo's report: sizes written one way (height x width), and timings named for what they measured."""

import pytest
import torch

from anchordetr_trt.demo import run_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    lines: list[str] = []
    # Seed 3's one image is 305 wide and 511 tall after the demo's resize: not square.
    report = run_demo(out, variant="r50-c5", num_images=1, seed=3, top_k=2, device="cpu", log=lines.append)
    return report, "\n".join(lines), (out / "report.md").read_text()


def test_sizes_are_height_x_width_everywhere(demo):
    report, printed, markdown = demo
    (record,) = report["images"]
    assert record["height"] != record["width"]
    size = f"{record['height']}x{record['width']}"
    batch = f"{report['input_shape'][1]}x{report['input_shape'][2]}"
    assert "(HxW)" in printed and size in printed and batch in printed
    assert f"{record['width']}x{record['height']}" not in printed + markdown
    assert f"| {size} |" in markdown and batch in markdown and "HxW" in markdown


@pytest.mark.skipif(torch.cuda.is_available(), reason="the demo runs twice on a GPU")
def test_a_single_run_on_the_cpu_is_not_called_steady(demo):
    report, printed, markdown = demo
    assert report["timing_s"]["steady_run"] is None
    assert "steady" not in markdown + printed
    assert report["ms_per_image"] == pytest.approx(1000 * report["timing_s"]["first_run"])
