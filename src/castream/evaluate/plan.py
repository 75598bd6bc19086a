"""What a run evaluates, with no model: the seeded selection of images, the fixed batches and which rank
computes each, the cells (model x pooling x method), the images each method sees, and each image's
adversarial hosts. The runner computes a plan, run.json stores it, and the report reads it back
(:meth:`Plan.from_info`), so the three agree by construction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

Cell = tuple[str, str, str]  # (model label, pooling, method); method "accuracy" is the accuracy cell


def selection(length: int, images: int | None, seed: int) -> list[int]:
    """The evaluated images of a split of ``length``: ``images`` of them (all when None) drawn by a
    permutation seeded by ``seed``, in index order."""
    count = length if images is None else min(images, length)
    order = torch.randperm(length, generator=torch.Generator().manual_seed(seed))
    return sorted(order[:count].tolist())


@dataclass(frozen=True)
class Plan:
    """The images, batches and cells of one run. ``poolings`` maps each model label (in order) to the
    poolings it is evaluated through (CA only for a model with a stream)."""

    indices: list[int]
    poolings: dict[str, list[str]]
    methods: list[str]
    batch_size: int
    method_images: dict[str, int]
    seed: int

    @classmethod
    def from_info(cls, config, info: dict) -> Plan:
        """The plan of a stored run: its configuration and run.json's selection and poolings."""
        return cls(
            indices=info["selection"],
            poolings=info["poolings"],
            methods=list(config.methods),
            batch_size=config.batch_size,
            method_images=dict(config.method_images),
            seed=config.seed,
        )

    def cells(self) -> list[Cell]:
        """Every method cell, models first, then poolings, then methods."""
        return [(m, p, method) for m, ps in self.poolings.items() for p in ps for method in self.methods]

    def accuracy_cells(self) -> list[Cell]:
        return [(m, p, "accuracy") for m, ps in self.poolings.items() for p in ps]

    def method_indices(self, method: str | None) -> list[int]:
        """The images a method is evaluated on: the first ``method_images[method]`` of the selection (all of
        them by default), so GAP and CA and any two methods see the same images."""
        return self.indices[: self.method_images.get(method, len(self.indices))]

    def wanted(self, cell: Cell) -> set[int]:
        """The images ``cell`` evaluates."""
        return set(self.indices if cell[2] == "accuracy" else self.method_indices(cell[2]))

    def batches(self, method: str | None = None) -> list[list[int]]:
        """The fixed batches of ``method``'s images (of the whole selection for None)."""
        size, indices = self.batch_size, self.method_indices(method)
        return [indices[i : i + size] for i in range(0, len(indices), size)]

    def batches_of(self, rank: int, world: int) -> Iterator[list[int]]:
        """The selection's batches that process ``rank`` of ``world`` computes: batch ``b`` is rank
        ``b % world``'s, so an image is in the same batch at any world size."""
        for b, indices in enumerate(self.batches()):
            if b % world == rank:
                yield indices

    def hosts(
        self, index: int, cases: int, accept: Callable[[int], bool], kind: str = "host images"
    ) -> list[int]:
        """The ``cases`` host images of image ``index`` for adversarial verification: selected images other
        than ``index`` that ``accept`` (those without the target class), in an order fixed by the seed and
        the image, so that every method, pooling, batch size and rank sees the same hosts.

        Candidates are drawn uniformly from the selection a few at a time, passing over repeats, the image
        itself and rejected ones: O(cases) work per image at any N. Only when such draws keep failing (hosts
        are rare) does it scan a seeded permutation of the rest."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        count, found, seen = len(self.indices), [], {index}

        def take(positions: list[int]) -> bool:
            for j in positions:
                candidate = self.indices[j]
                if candidate not in seen:
                    seen.add(candidate)
                    if accept(candidate):
                        found.append(candidate)
                        if len(found) == cases:
                            return True
            return False

        for _ in range(8):
            if take(torch.randint(count, (4 * cases,), generator=generator).tolist()):
                return found
        if take(torch.randperm(count, generator=generator).tolist()):
            return found
        raise ValueError(
            f"adversarial verification needs {cases} {kind} for image {index}; the {count} evaluated images "
            f"have {len(found)}"
        )
