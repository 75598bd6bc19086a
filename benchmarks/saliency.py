"""Saliency speed: each method's time divided by the limit the saliency issue sets for it.

- gradient methods: vs the model's plain forward + backward (to the parameters) on the same batch (≤ 1.1)
- Score-CAM / Ablation-CAM / SA-CAM: vs the forward-only limit, i.e. the time of forwarding as many
  images as the method must score, in batches of ``batch_size``, measured in the same run (≤ 1.2)
- Opti-CAM: vs ``iterations`` x (forward + backward to the input) of the batch (≤ 1.2)

Prints one JSON record per (model, method, autocast). Example:
    python benchmarks/saliency.py --models resnet18 resnet50 --size 224 --batch 8
"""

from castream.bench.saliency import main

if __name__ == "__main__":
    main()
