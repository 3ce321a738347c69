"""Object detection with searched binary subnets as Faster R-CNN backbones (the paper's Table 3)."""
