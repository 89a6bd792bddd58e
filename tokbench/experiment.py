"""What one experiment is: the model (and its default per task), the data it runs on, and the columns that name
every row of it. Shared by the pipeline and the commands (``ablate``, ``run``)."""

from __future__ import annotations

from pathlib import Path

from tokbench.data import DETECTION_BENCHMARKS, SyntheticAction, detection_benchmark
from tokbench.errors import ConfigError, DataError
from tokbench.models.zoo import LoadedModel

DEFAULT_MODEL = {"detect": "synthvid-det", "action": "synthaction-vivit"}
EMBEDDED = (*DETECTION_BENCHMARKS, "synthaction")  # the embedded benchmarks' names (--data NAME)


def embedded_benchmark(loaded: LoadedModel) -> str:
    """The embedded benchmark a model runs on by default: a shipped model's own (its card's validation data),
    ``synthaction`` for action models, else the calibrated ``synthvid``."""
    if loaded.kind == "action":
        return "synthaction"
    version = (loaded.card or {}).get("val_data", {}).get("spec_version", 2)
    return "synthvid-fast" if version == 1 else "synthvid"


def open_data(spec, loaded: LoadedModel):
    """An embedded benchmark (``spec.data`` one of ``EMBEDDED``, or None: the model's own, at its input size), or
    the user's data (``spec.data``);
    ``spec`` is any spec with ``data``, ``clips``, ``seed`` and ``views`` (``AblationSpec``, ``RunSpec``).

    ``vid:ROOT`` is ImageNet VID's val split (each snippet one whole clip, docs/method.md 9.1 input rule),
    ``csv:LABELS.csv`` a Kinetics / EPIC label CSV over the videos in its folder (ViViT sampling: the model's frame
    count, 2 frames apart; ``views`` 12 = 3 spatial x 4 temporal views by default, or 1 centred view); anything else
    is unlabelled video (``sample:NAME``, a folder or one file).
    """
    size = loaded.img_size[0]
    csv_data = spec.data is not None and spec.data.startswith("csv:")
    if spec.views not in (None, 1) and not csv_data:
        raise ConfigError(f"--views {spec.views} applies to labelled video classification (csv: data) only")
    name = spec.data or embedded_benchmark(loaded)
    if name in EMBEDDED:
        if (name == "synthaction") != (loaded.kind == "action"):
            raise ConfigError(f"--data {name} is a {'action' if name == 'synthaction' else 'detection'} benchmark; "
                              f"{loaded.name} is a {loaded.kind} model")
        if name == "synthaction":
            return SyntheticAction("val", num_clips=spec.clips, seed=spec.seed)
        return detection_benchmark(name, num_clips=spec.clips, size=size, seed=spec.seed)
    frames = loaded.model.spec.num_frames if loaded.kind == "action" else 32
    if spec.data.startswith("vid:"):
        from tokbench.data.imagenet_vid import ImageNetVID

        return _check_classes(ImageNetVID(Path(spec.data[4:]).expanduser(), "val", size=size, max_clips=spec.clips),
                              loaded)
    if csv_data:
        from tokbench.data.kinetics import LabelledVideos

        labels = Path(spec.data[4:]).expanduser()
        return _check_classes(LabelledVideos(labels.parent, labels, size=size, num_frames=frames, stride=2,
                                             max_clips=spec.clips, views=spec.views or 12), loaded)
    from tokbench.data.video import open_video_data

    return open_video_data(spec.data, size=size, num_frames=frames, max_clips=spec.clips)


def _check_classes(dataset, loaded: LoadedModel):
    """Labelled data must name as many classes as the model predicts (labels index the model's outputs)."""
    if loaded.kind in ("action", "detect"):
        classes = loaded.model.spec.num_classes
    elif loaded.kind == "classify":
        classes = loaded.backbone.num_classes
    else:
        return dataset
    if classes != len(dataset.class_names):
        raise DataError(f"{loaded.name} predicts {classes} classes but the data names {len(dataset.class_names)}; "
                        "labels must index the model's outputs")
    return dataset


def row_columns(loaded: LoadedModel, spec) -> dict:
    """The experiment's naming columns of every row (after the resolved options and sampling)."""
    return {"task": loaded.kind, "model": loaded.name, "weights": loaded.weights, "checkpoint": loaded.checkpoint,
            "data": spec.data or embedded_benchmark(loaded), "clips": spec.clips, "frames_per_clip_limit": spec.frames}


def experiment_of(spec, loaded: LoadedModel, dataset) -> dict:
    """What makes rows comparable in one ``--out`` folder: the rows' experiment columns (less the checkpoint path,
    which ``weights`` identifies), the input size, the data generator's name and version, the seed and views."""
    data = dataset.spec()
    columns = {k: v for k, v in row_columns(loaded, spec).items() if k != "checkpoint"}
    return {"command": "ablate", **columns, "img_size": list(loaded.img_size), "data_name": data.get("name"),
            "data_version": data.get("spec_version"), "data_seed": spec.seed, "views": getattr(dataset, "views", 1)}


def training_note(loaded: LoadedModel) -> str:
    """Whether the pruned results are training-free (docs/method.md 11): the paper's classification numbers use a
    temporal encoder and classifier fine-tuned on pruned outputs; tokbench's own runs use none."""
    if loaded.checkpoint:
        return ("user-supplied weights: pruning itself is training-free, but these weights may include a temporal "
                "encoder / classifier fine-tuned on pruned outputs (as the paper's classification numbers do)")
    if loaded.card:
        return "training-free: tokbench's shipped weights, trained on full frames only"
    return "training-free: randomly initialised weights (fidelity to dense only)"
