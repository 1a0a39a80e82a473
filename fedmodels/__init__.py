"""Models, datasets and partitioners: plain torch/numpy, no Flower, no CLI."""
