"""Layer 1, data structures: COCO reading and validation (coco), the synthetic demo (demo), the Dataset."""
