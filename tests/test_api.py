"""The public names of shared/API.md exist with the keywords users type."""

import inspect

import castream


def params(fn):
    return set(inspect.signature(fn).parameters)


def test_model_api():
    assert {"start", "block", "class_specific", "taps", "head"} <= params(castream.attach_stream)
    assert {"pooling", "labels"} <= params(castream.StreamModel.forward)
    for name in ("save_stream", "load_stream", "count_parameters", "count_flops", "Preprocess"):
        assert callable(getattr(castream, name))
    assert {"input_size", "forward_kwargs"} <= params(castream.count_flops)
    assert {"normalize", "denormalize", "mask"} <= set(dir(castream.Preprocess))


def test_saliency_api():
    names = castream.saliency.available()
    assert {
        "gradcam",
        "gradcam++",
        "scorecam",
        "opticam",
        "sacam",
        "fakecam",
        "rawattention",
        "rollout",
    } <= set(names)
    assert {"images", "targets", "upsample", "normalize"} <= params(castream.saliency.GradCAM.__call__)
    assert castream.saliency.get("gradcam") is castream.saliency.GradCAM


def test_metrics_api():
    m = castream.metrics
    assert {"preprocess"} <= params(m.recognition)
    for fn in (m.insertion, m.deletion):
        assert {"preprocess", "protocol", "step", "batch_size", "return_curves"} <= params(fn)
    assert {"patch_size", "regions"} <= params(m.aopc)
    assert {"radius", "samples"} <= params(m.max_sensitivity)
    assert {"method", "model", "images", "targets", "preprocess"} <= params(m.adcc)
    assert list(inspect.signature(m.localization).parameters) == [
        "maps",
        "boxes",
        "targets",
        "predictions",
        "probabilities",
    ]
    assert {"deltas"} <= params(m.box_accuracy)
    assert {"method_factory", "model", "images", "targets"} <= params(m.sanity_check)
    assert m.aggregate.Aggregator is m.Aggregator


def test_data_training_cli_api():
    synthetic = castream.data.synthetic
    assert {"classes", "train", "val", "size", "bias", "seed"} <= params(synthetic.generate)
    assert {"root", "split", "transform"} <= params(synthetic.SyntheticShapes)
    assert callable(castream.train.train_classifier) and callable(castream.train.train_stream)
    assert {"error", "lam"} <= params(castream.train.gradreg.GradientRegularizer)
    from castream.cli import build_parser

    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    assert {"demo", "synth", "train", "explain", "evaluate", "bench"} <= set(commands)
