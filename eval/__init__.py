"""COCO evaluation, backend parity reports and synthetic datasets.

``evaluate_coco(model, ann_file, image_dir)`` scores any detector with the model's call signature;
``parity_report(model_a, model_b, ann_file, image_dir)`` compares two (e.g. eager FP32 and a compiled
backend) and ``write_report`` saves the comparison as JSON and markdown; ``make_synthetic_coco`` writes a
small COCO-format dataset; ``COCO_CLASSES`` names the 91 category slots the model predicts.

To spread an evaluation over GPUs, launch the script with ``torchrun --nproc_per_node=N`` and build
each rank's model on its own GPU; ranks other than 0 return None::

    torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    model = anchordetr_trt.compile(ckpt)
    result = evaluate_coco(model, "instances_val2017.json", "val2017")  # a dict on rank 0
    torch.distributed.destroy_process_group()  # evaluate_coco started it; it stays up until then
"""

from .categories import COCO_CLASSES
from .coco import evaluate_coco
from .parity import parity_report
from .report import write_report
from .synthetic import make_synthetic_coco

__all__ = ["COCO_CLASSES", "evaluate_coco", "make_synthetic_coco", "parity_report", "write_report"]
