"""Speed benchmarks over the public API; each prints JSON records with a time ratio and its target.

``castream bench`` runs a quick configuration of each (small images, minutes on a laptop CPU);
``castream bench --full`` the configurations of the issues (224 x 224, ResNet-18/50). The scripts in
``benchmarks/`` run the same code with every option on the command line.
"""

from __future__ import annotations

QUICK = {
    "peers": ["--model", "resnet18", "--size", "112", "--batch", "2", "--repeats", "1"],
    "saliency": [
        "--models",
        "resnet18",
        "--size",
        "64",
        "--batch",
        "8",
        "--score-batch",
        "256",
        "--opticam-iterations",
        "20",
        "--ep-iterations",
        "20",
        "--repeats",
        "2",
    ],
    "causal": ["--model", "resnet18", "--size", "64", "--images", "2", "--batch-sizes", "64", "128"],
    "train": [
        "--model",
        "resnet18",
        "--size",
        "64",
        "--batch",
        "32",
        "--synthetic-images",
        "400",
        "--synthetic-size",
        "96",
    ],
    "gradreg": ["--model", "cifar_resnet18", "--size", "32", "--batch", "32"],
    "evaluate": ["--model", "resnet18", "--size", "64", "--images", "16", "--metric-batch", "128"],
    "precision": ["--images", "32", "--map-images", "8"],
    "report": ["--images", "2000", "--base", "16", "--protocol", "coarse"],
    "plan": ["--images", "20000"],
    "claims": ["--claims", "300"],
}
FULL = {
    "peers": ["--model", "resnet50", "--size", "224", "--batch", "2", "--repeats", "1"],
    "saliency": ["--models", "resnet18", "resnet50", "--size", "224", "--batch", "8"],
    "causal": ["--model", "resnet50", "--size", "224", "--images", "2"],
    "train": ["--model", "resnet50", "--size", "224", "--batch", "128"],
    "gradreg": ["--model", "cifar_resnet18", "--size", "32", "--batch", "128"],
    "evaluate": ["--model", "resnet50", "--size", "224", "--images", "64"],
    "precision": ["--images", "200", "--map-images", "32"],
    "report": ["--images", "50000"],
    "plan": ["--images", "200000"],
    "claims": ["--claims", "2000"],
}


def run(names: list[str] | None = None, *, full: bool = False, extra: list[str] | None = None) -> None:
    """Run the named benchmarks (default: all) in their quick or full configuration."""
    from importlib import import_module

    configs = FULL if full else QUICK
    for name in names or list(configs):
        if name not in configs:
            raise ValueError(f"unknown benchmark {name!r}; available: {list(configs)}")
        import_module(f"castream.bench.{name}").main([*configs[name], *(extra or [])])
