"""COCO evaluation, backend parity reports and synthetic datasets."""
