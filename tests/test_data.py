"""Datasets on tiny fabricated copies of each official layout, and the synthetic benchmark."""

import colorsys
import json
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from castream.data import (
    CIFAR100,
    CUB200,
    MIT67,
    VOC2012,
    ImageFolder,
    ImageNet,
    SyntheticShapes,
    collate,
    eval_transform,
    synthetic,
    train_transform,
)
from castream.data.synthetic import SyntheticConfig, generate, render


def write_image(path, w=80, h=60, colour=(120, 30, 200)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), colour).save(path)


def voc_xml(path, objects, w=80, h=60):
    parts = [f"<annotation><size><width>{w}</width><height>{h}</height></size>"]
    for name, (x0, y0, x1, y1) in objects:
        parts.append(
            f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
            f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(parts) + "</annotation>")


# --- synthetic benchmark ------------------------------------------------------------------------------


def test_synthetic_is_deterministic_cached_and_consistent(tmp_path):
    a = generate(tmp_path / "a", classes=4, train=10, val=4, size=48, seed=3, workers=1)
    b = generate(tmp_path / "b", classes=4, train=10, val=4, size=48, seed=3, workers=2)
    doc_a, doc_b = (json.loads((p / "annotations.json").read_text()) for p in (a, b))
    assert doc_a["splits"] == doc_b["splits"] and doc_a["classes"] == ["disc", "square", "triangle", "star"]
    assert doc_a["format"] == synthetic.FORMAT
    mtime = (a / "annotations.json").stat().st_mtime_ns
    assert generate(a, classes=4, train=10, val=4, size=48, seed=3) == a  # cached
    assert (a / "annotations.json").stat().st_mtime_ns == mtime
    with pytest.raises(FileExistsError, match="different synthetic set"):
        generate(a, classes=4, train=10, val=4, size=48, seed=4)
    data = SyntheticShapes(a, "train")
    memory = SyntheticShapes.in_memory("train", count=10, classes=4, size=48, seed=3)
    for i in range(len(data)):
        image, label, target = data[i]
        image_m, label_m, target_m = memory[i]
        assert np.array_equal(np.asarray(image), np.asarray(image_m)) and label == label_m
        for key in ("boxes", "box_labels", "classes", "mask"):
            assert torch.equal(target[key], target_m[key]), key
        assert torch.equal(target["mask"].bool(), target["classes"] == label + 1)
        assert (target["box_labels"] == label).any()  # the label's evidence is always visible


def _interior(class_map: np.ndarray, value: int) -> np.ndarray:
    """Pixels of ``value`` whose 3 x 3 neighbourhood is all ``value`` (no anti-aliased edge)."""
    padded = np.pad(class_map == value, 1)
    h, w = class_map.shape
    return np.all(
        [padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] for dy in (-1, 0, 1) for dx in (-1, 0, 1)], 0
    )


@pytest.mark.parametrize("index", [0, 1, 2, 3, 4, 5, 6, 7])
def test_synthetic_class_maps_and_boxes_match_the_pixels(index):
    config = synthetic.make_config(classes=6, size=64, scale=(0.16, 0.26), others=0.9, seed=1)
    scene = render(config, "val", index)
    pixels = scene.pixels.astype(np.float32) / 255
    assert scene.label in scene.box_labels.tolist()
    for c in np.unique(scene.box_labels):
        inside = _interior(scene.classes, c + 1)
        colours = scene.colours[scene.box_labels == c]
        # an interior pixel of class c has the colour of one of c's instances (pixel noise: sigma 0.03)
        distance = np.abs(pixels[inside][:, None, :] - colours[None]).max(-1).min(-1)
        assert inside.sum() > 10 and np.quantile(distance, 0.99) < 0.15, (c, distance.max())
        # every class-c pixel lies in one of c's boxes, and every box of c holds class-c pixels
        covered = np.zeros_like(scene.classes, dtype=bool)
        for x0, y0, x1, y1 in scene.boxes[scene.box_labels == c].astype(int):
            assert (scene.classes[y0:y1, x0:x1] == c + 1).any()
            covered[y0:y1, x0:x1] = True
        assert not ((scene.classes == c + 1) & ~covered).any()
    # the label dominates: no other class shows more than DOMINANCE times its visible area
    areas = np.bincount(scene.classes.ravel(), minlength=8)[1:]
    assert all(areas[c] <= synthetic.DOMINANCE * areas[scene.label] for c in range(6) if c != scene.label)


def test_synthetic_other_classes_appear_as_documented():
    def fraction(others):
        config = synthetic.make_config(classes=6, size=64, scale=(0.16, 0.26), others=others)
        scenes = [render(config, "train", i) for i in range(300)]
        return np.mean([bool((s.box_labels != s.label).any()) for s in scenes])

    assert fraction(0.0) == 0.0
    # `others` is the probability that other instances are drawn; a few are dropped (no room, or they
    # would rival the label: the dominance rule), so the observed share is a little lower (docs/data.md)
    assert 0.5 <= fraction(0.9) <= 0.9
    assert 0.35 <= fraction(0.6) <= 0.6


def _background_hue(pixels, class_map):
    rgb = pixels[class_map == 0].reshape(-1, 3).mean(0) / 255
    return colorsys.rgb_to_hsv(*rgb)[0]


def test_context_bias_makes_background_predictive():
    def nearest_centroid_accuracy(bias):
        config = SyntheticConfig(classes=4, size=32, bias=bias, seed=0, others=0.0)
        feats, labels = [], []
        for i in range(240):
            scene = render(config, "train", i)
            hue = _background_hue(scene.pixels, scene.classes) * 2 * np.pi
            feats.append([np.cos(hue), np.sin(hue)])
            labels.append(scene.label)
        feats, labels = np.array(feats), np.array(labels)
        centroids = np.stack([feats[:120][labels[:120] == c].mean(0) for c in range(4)])
        predicted = ((feats[120:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
        return (predicted == labels[120:]).mean()

    assert nearest_centroid_accuracy(1.0) > 0.9
    assert nearest_centroid_accuracy(0.0) < 0.5


def test_synthetic_bad_input(tmp_path):
    with pytest.raises(ValueError, match="classes must lie"):
        generate(tmp_path / "x", classes=13)
    with pytest.raises(TypeError, match="classes must be an integer"):
        generate(tmp_path / "x", classes=4.5)
    with pytest.raises(ValueError, match="others must be a probability"):
        generate(tmp_path / "x", others=1.5)
    with pytest.raises(FileNotFoundError, match=r"annotations\.json"):
        SyntheticShapes(tmp_path / "missing")


def test_synthetic_never_touches_foreign_folders(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="not a castream synthetic set"):
        generate(mine, classes=3, train=2, val=2, size=32, workers=1)
    assert (mine / "thesis.tex").read_text() == "precious" and sorted(os.listdir(mine)) == ["thesis.tex"]
    assert sorted(os.listdir(tmp_path)) == ["mine"]  # no temporary folder left behind
    empty = tmp_path / "empty"
    empty.mkdir()
    assert generate(empty, classes=3, train=2, val=2, size=32, workers=1) == empty
    assert (empty / "annotations.json").is_file()


def test_synthetic_old_format_is_refused_clearly(tmp_path):
    root = generate(tmp_path / "s", classes=3, train=2, val=2, size=32, workers=1)
    document = json.loads((root / "annotations.json").read_text())
    (root / "annotations.json").write_text(json.dumps({**document, "format": "castream-synthetic/1"}))
    with pytest.raises(ValueError, match="older castream"):
        SyntheticShapes(root, "val")
    with pytest.raises(ValueError, match="older castream"):
        generate(root, classes=3, train=2, val=2, size=32, workers=1)
    (root / "annotations.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"cannot read.*annotations\.json"):
        SyntheticShapes(root, "val")


def test_transforms_move_boxes_and_masks(tmp_path):
    root = generate(tmp_path / "s", classes=3, train=2, val=2, size=64, seed=1, workers=1)
    raw = SyntheticShapes(root, "val")
    data = SyntheticShapes(root, "val", transform=eval_transform(32, resize=40))
    image, _, target = data[0]
    _, _, raw_target = raw[0]
    assert image.shape == (3, 32, 32) and target["mask"].shape == (32, 32)
    # resize 64 -> 40 (x 0.625), centre crop 32 (offset 4), clamp to [0, 32]
    expected = (raw_target["boxes"] * 0.625 - 4).clamp(0, 32)
    expected = expected[(expected[:, 2] > expected[:, 0]) & (expected[:, 3] > expected[:, 1])]
    torch.testing.assert_close(target["boxes"], expected)
    batch = collate([data[0], data[1]])
    assert batch.images.shape == (2, 3, 32, 32) and batch.labels.shape == (2,) and batch.skipped == 0
    augmented = SyntheticShapes(root, "train", transform=train_transform(48, scale=(0.5, 1.0)))[0]
    assert augmented[0].shape == (3, 48, 48)


# --- real datasets in their official layouts ---------------------------------------------------------


def test_imagenet_folder_with_xml_boxes(tmp_path):
    root = tmp_path / "imagenet"
    write_image(root / "val" / "n01440764" / "ILSVRC2012_val_00000001.JPEG")
    write_image(root / "val" / "n01443537" / "ILSVRC2012_val_00000002.JPEG")
    voc_xml(
        root / "boxes" / "ILSVRC2012_val_00000001.xml",
        [("n01440764", (11, 21, 40, 50)), ("n09999999", (1, 1, 5, 5))],
    )
    data = ImageNet(root, "val", boxes=root / "boxes")
    assert data.classes == ["n01440764", "n01443537"]
    _, label, target = data[0]
    assert label == 0 and target["boxes"].tolist() == [[10.0, 20.0, 40.0, 50.0]]  # 1-based -> 0-based
    assert data[1][2]["boxes"].shape == (0, 4)
    resized = ImageNet(root, "val", transform=eval_transform(30, resize=30), boxes=root / "boxes")
    # 80x60 -> short side 30: x 0.5 -> 40x30; centre crop 30: x offset 5
    torch.testing.assert_close(resized[0][2]["boxes"], torch.tensor([[0.0, 10.0, 15.0, 25.0]]))


def test_cub_official_files(tmp_path):
    root = tmp_path / "CUB_200_2011"
    write_image(root / "images" / "001.Black_footed_Albatross" / "a.jpg")
    write_image(root / "images" / "002.Laysan_Albatross" / "b.jpg")
    (root / "images.txt").write_text("1 001.Black_footed_Albatross/a.jpg\n2 002.Laysan_Albatross/b.jpg\n")
    (root / "image_class_labels.txt").write_text("1 1\n2 2\n")
    (root / "train_test_split.txt").write_text("1 1\n2 0\n")
    (root / "bounding_boxes.txt").write_text("1 10.0 5.0 20.0 30.0\n2 0.0 0.0 80.0 60.0\n")
    (root / "classes.txt").write_text("1 001.Black_footed_Albatross\n2 002.Laysan_Albatross\n")
    train, test = CUB200(root, "train"), CUB200(root, "test")
    assert len(train) == 1 and len(test) == 1
    _, label, target = train[0]
    assert label == 0 and target["boxes"].tolist() == [[10.0, 5.0, 30.0, 35.0]]
    assert test[0][1] == 1
    (root / "image_class_labels.txt").write_text("1 1\n")
    with pytest.raises(ValueError, match="same image ids"):
        CUB200(root, "train")
    (root / "classes.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"classes\.txt"):
        CUB200(root, "train")


def test_voc_multilabel_and_boxes(tmp_path):
    root = tmp_path / "VOCdevkit" / "VOC2012"
    write_image(root / "JPEGImages" / "2008_000001.jpg")
    voc_xml(
        root / "Annotations" / "2008_000001.xml",
        [("dog", (1, 1, 20, 30)), ("person", (30, 10, 60, 50)), ("dog", (40, 40, 80, 60))],
    )
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "val.txt").write_text("2008_000001\n")
    data = VOC2012(root, "val")
    _, label, target = data[0]
    assert label.shape == (20,) and label.nonzero().flatten().tolist() == [11, 14]  # dog, person
    assert target["box_labels"].tolist() == [11, 14, 11] and target["boxes"][0].tolist() == [
        0.0,
        0.0,
        20.0,
        30.0,
    ]
    cropped = VOC2012(root, "val", transform=eval_transform(30, resize=30))[0][2]
    assert len(cropped["boxes"]) == len(cropped["box_labels"])  # dropped boxes drop their labels
    with pytest.raises(FileNotFoundError, match="train"):
        VOC2012(root, "train")


def test_cifar100_pickles(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    data = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    with open(folder / "train", "wb") as f:
        pickle.dump({b"data": data, b"fine_labels": [7, 3]}, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"c{i}".encode() for i in range(100)]}, f)
    ds = CIFAR100(tmp_path, "train")
    image, label, target = ds[1]
    assert label == 3 and image.size == (32, 32) and ds.classes[7] == "c7"
    assert np.asarray(image)[0, 0].tolist() == [data[1, 0], data[1, 1024], data[1, 2048]]
    assert target["boxes"].shape == (0, 4)


def test_mit67_and_imagefolder(tmp_path):
    root = tmp_path / "mit67"
    write_image(root / "Images" / "bakery" / "x.jpg")
    write_image(root / "Images" / "kitchen" / "y.jpg")
    (root / "TrainImages.txt").write_text("kitchen/y.jpg\n")
    (root / "TestImages.txt").write_text("bakery/x.jpg\nkitchen/y.jpg\n")
    assert [label for _, label, _ in MIT67(root, "test")] == [0, 1] and len(MIT67(root, "train")) == 1
    folder = ImageFolder(root / "Images")
    assert folder.classes == ["bakery", "kitchen"] and len(folder) == 2


def test_corrupt_files_are_skipped_and_counted(tmp_path):
    root = tmp_path / "folder"
    write_image(root / "a" / "good.png")
    (root / "a" / "bad.jpg").write_bytes(b"not an image")
    data = ImageFolder(root, transform=eval_transform(16))
    with pytest.warns(UserWarning, match="bad.jpg"):
        items = [data[i] for i in range(len(data))]
    batch = collate(items)
    assert batch.skipped == 1 and batch.images.shape == (1, 3, 16, 16)


def test_layout_errors_name_what_was_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ImageFolder layout\) at .*nothing/val"):
        ImageNet(tmp_path / "nothing", "val")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(ValueError, match="contains no images"):
        ImageFolder(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=r"TestImages\.txt"):
        (tmp_path / "m" / "Images" / "c").mkdir(parents=True)
        write_image(tmp_path / "m" / "Images" / "c" / "i.jpg")
        MIT67(tmp_path / "m", "test")


class _Payload:
    """A pickle that would write a file when loaded (the attack the restricted unpickler blocks)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_cifar100_refuses_pickles_that_run_code(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    victim = tmp_path / "pwned.txt"
    with open(folder / "train", "wb") as f:
        pickle.dump({b"data": _Payload(victim), b"fine_labels": [1]}, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [b"a"]}, f)
    with pytest.raises(ValueError, match=r"train as an official CIFAR-100 file: refusing to load io\.open"):
        CIFAR100(tmp_path, "train")
    assert not victim.exists()
    with open(folder / "train", "wb") as f:
        pickle.dump([1, 2], f)
    with pytest.raises(ValueError, match="expected a dict"):
        CIFAR100(tmp_path, "train")


def test_16_bit_images_keep_their_range_and_bombs_are_skipped(tmp_path, monkeypatch):
    folder = tmp_path / "folder" / "a"
    folder.mkdir(parents=True)
    ramp = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1024).astype(np.uint16)
    Image.fromarray(ramp).save(folder / "deep.png")
    image, _, _ = ImageFolder(tmp_path / "folder")[0]
    pixels = np.asarray(image)
    assert pixels.shape == (8, 8, 3) and pixels[0, 0, 0] == 0 and 240 <= pixels[7, 7, 0] <= 255
    assert len(np.unique(pixels[..., 0])) == 64  # the ramp survives (convert("RGB") saturates it)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # 64 px > 2 * 10: PIL's decompression-bomb error
    with pytest.warns(UserWarning, match="deep.png"):
        assert ImageFolder(tmp_path / "folder")[0] is None


def test_view_without_annotations_skips_masks_and_boxes(tmp_path, monkeypatch):
    """Classification training never reads boxes or class maps: the view decodes no mask PNG and its items
    carry an empty target, with the same image (same augmentation seed) as the annotated item. The
    dataset itself keeps its annotations."""
    root = generate(tmp_path / "s", classes=3, train=4, val=0, size=32, workers=1)
    full = SyntheticShapes(root, "train", transform=train_transform(32))
    bare = full.without_annotations()
    opened = []
    original = Image.open
    monkeypatch.setattr(
        Image, "open", lambda path, *a, **k: opened.append(str(path)) or original(path, *a, **k)
    )
    torch.manual_seed(3)
    image, label, target = bare[1]
    assert target == {} and len(opened) == 1 and "masks" not in opened[0]
    torch.manual_seed(3)
    annotated = full[1]
    assert torch.equal(image, annotated[0]) and label == annotated[1] and "mask" in annotated[2]
    assert full.annotations and not bare.annotations
