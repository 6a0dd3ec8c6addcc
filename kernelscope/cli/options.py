"""Option definitions shared by the commands, and parsers for their compact value formats."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from kernelscope.data.preprocessing import PreprocessingOptions
from kernelscope.errors import UsageError

if TYPE_CHECKING:
    from kernelscope.audit import InspectConfig

PREPROCESSING = "Preprocessing (default: model metadata, then dataset preset)"
DATA = "Data"
OUTPUT = "Output"

DataOption = Annotated[
    str,
    typer.Option(
        "--data",
        "-d",
        help="Data set name (cifar10, mnist, fashion-mnist) or path: image folder, .tar of class "
        "folders, .npz with x and y.",
        rich_help_panel=DATA,
    ),
]
DataDirOption = Annotated[
    Path | None,
    typer.Option(
        help="Where named data sets are looked up (then $KERNELSCOPE_DATA, then the user cache).", rich_help_panel=DATA
    ),
]
SplitOption = Annotated[str, typer.Option(help="Split of a named data set: test or train.", rich_help_panel=DATA)]
DownloadOption = Annotated[
    bool, typer.Option("--download/--no-download", help="Download a missing named data set.", rich_help_panel=DATA)
]
LimitOption = Annotated[int | None, typer.Option(help="Use a seeded random subset of N images.", rich_help_panel=DATA)]
SeedOption = Annotated[int, typer.Option(help="Seed for the subset and the bootstrap.", rich_help_panel=DATA)]
BatchSizeOption = Annotated[int, typer.Option(help="Images per batch.", rich_help_panel=DATA)]

ScaleOption = Annotated[
    float | None,
    typer.Option(help="Multiply raw 0..255 pixels by this (1/255 maps to [0, 1]).", rich_help_panel=PREPROCESSING),
]
MeanOption = Annotated[
    str | None,
    typer.Option(help="Per-channel mean subtracted after scaling, e.g. 0.49,0.48,0.45.", rich_help_panel=PREPROCESSING),
]
StdOption = Annotated[
    str | None,
    typer.Option(help="Per-channel std divided by after the mean, e.g. 0.25,0.24,0.26.", rich_help_panel=PREPROCESSING),
]
LayoutOption = Annotated[
    str | None,
    typer.Option(
        help="Model input layout: NCHW, NHWC, or NHW for a 3-D one-channel input (default: from the model).",
        rich_help_panel=PREPROCESSING,
    ),
]
SizeOption = Annotated[
    str | None,
    typer.Option(
        help="Resize images to H,W (needed when the data's size differs from the model's).",
        rich_help_panel=PREPROCESSING,
    ),
]
ResizeOption = Annotated[
    int | None,
    typer.Option(
        help="Scale each image's shorter side to N pixels (image folders), e.g. 256 before --crop 224.",
        rich_help_panel=PREPROCESSING,
    ),
]
CropOption = Annotated[
    int | None,
    typer.Option(help="Cut the centred N x N square of each image (image folders).", rich_help_panel=PREPROCESSING),
]
PresetOption = Annotated[
    str | None,
    typer.Option(
        help="Normalization preset: imagenet, cifar10, mnist or fashion-mnist (its scale, mean and std).",
        rich_help_panel=PREPROCESSING,
    ),
]
ChannelOrderOption = Annotated[
    str | None,
    typer.Option(
        "--channel-order",
        help="rgb, or bgr for models trained on blue-green-red images (Caffe, OpenCV); --mean/--std are then in "
        "BGR order. Default: the model's metadata, else rgb.",
        rich_help_panel=PREPROCESSING,
    ),
]
ClassesOption = Annotated[
    Path | None,
    typer.Option(
        "--classes",
        help="Class-index file mapping class folder names to the model's output indices (e.g. ImageNet "
        "synsets): JSON {name: index}, JSON {index: [name, label]}, a JSON list, or one name per line.",
        rich_help_panel=PREPROCESSING,
    ),
]
ChannelsOption = Annotated[
    int | None, typer.Option(help="Convert images to 1 (grayscale) or 3 (RGB) channels.", rich_help_panel=PREPROCESSING)
]

JsonOption = Annotated[
    Path | None,
    typer.Option("--json", help="Write the full report as JSON (schema: docs/json-schema.md).", rich_help_panel=OUTPUT),
]
HtmlOption = Annotated[
    Path | None,
    typer.Option(
        "--html",
        help="Write a self-contained HTML report with the paper's three figures (needs matplotlib: the plots "
        "extra of kernelscope).",
        rich_help_panel=OUTPUT,
    ),
]
PlotsOption = Annotated[
    Path | None,
    typer.Option(
        "--plots",
        help="Write the figures as PNG files into this folder (created if needed): fig1_kernel_accuracy.png, "
        "fig2_accuracy_vs_epsilon.png, fig3_targeting.png.",
        rich_help_panel=OUTPUT,
    ),
]
ForceOption = Annotated[bool, typer.Option("--force", help="Overwrite existing output files.", rich_help_panel=OUTPUT)]
FailUnderOption = Annotated[
    list[str] | None,
    typer.Option(
        "--fail-under",
        help="Gates: exit 1 unless each holds, e.g. clean=0.9,fgsm@0.01=0.3,pgd@0.01=0.2,worst@0.01=0.2 (lower "
        "bounds, fractions) or fragile-share=0.5 (upper bound); ε values join the sweep. Repeatable.",
        rich_help_panel=OUTPUT,
    ),
]
QuietOption = Annotated[
    bool,
    typer.Option(
        "--quiet", "-q", help="Print only the verdict (and errors); no tables or progress bars.", rich_help_panel=OUTPUT
    ),
]


LayerOption = Annotated[
    str | None, typer.Option(help="Audit this Conv node (name or output name) instead of the first.")
]
OutputOption = Annotated[str | None, typer.Option(help="Model output holding the class scores (default: the first).")]
InputShapeOption = Annotated[
    str | None, typer.Option(help="Input shape for TorchScript files that do not record it, e.g. 1,3,32,32.")
]
DropOption = Annotated[
    str, typer.Option(help="weights: zero kernel k's weights and bias; channel: zero channel k after BN/activation.")
]
TargetingAtOption = Annotated[
    str,
    typer.Option(
        "--targeting-at",
        help="Tensor the targeting test compares: conv (the Conv's output, the paper's Algorithm 1; linear, so "
        "its comparison hardly depends on ε) or activation (after the BN / bias / activation that follow the Conv).",
    ),
]
EpsSweepOption = Annotated[
    str, typer.Option(help="Default ε sweep when no explicit list is given: lin or log (smaller for CIFAR-like data).")
]
BoundsOption = Annotated[str, typer.Option(help="Pixel bounds lo,hi of the attack in [0, 1] units.")]
AtolOption = Annotated[
    float | None,
    typer.Option(
        help="Mirror/onnxruntime parity tolerance, relative to max(1, max |logit|) (default 1e-4; 1e-2 float16)."
    ),
]
MechanismOption = Annotated[
    str,
    typer.Option(
        help="How kernel variants are evaluated: auto (time both on a probe batch, keep the cheaper), mask (one "
        "session, a kernel-mask input, several variants per run) or sessions (one session per variant, the "
        "model with the kernel's weights dropped)."
    ),
]
DeviceOption = Annotated[str, typer.Option(help="auto (CUDA if onnxruntime-gpu sees a GPU), cpu or cuda.")]
MemoryOption = Annotated[
    str,
    typer.Option(
        help="Memory the process should stay within (e.g. 2GB, 512MB): scoring runs, attack and fine-tuning "
        "batches are sized to fit, so large models run fewer images at a time."
    ),
]
ThreadsOption = Annotated[
    int | None, typer.Option(help="CPU threads for onnxruntime and the PyTorch mirror (default: all cores).")
]


def parse_floats(text: str | None, what: str) -> tuple[float, ...] | None:
    """``"0.5,0.4"`` -> ``(0.5, 0.4)``; ``None`` stays ``None``."""
    if text is None:
        return None
    try:
        values = tuple(float(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError:
        raise UsageError(f"{what} must be numbers separated by commas, not {text!r}") from None
    if not values:
        raise UsageError(f"{what} is empty")
    return values


def parse_ints(text: str | None, what: str, count: int | None = None) -> tuple[int, ...] | None:
    """``"1,3,32,32"`` -> ``(1, 3, 32, 32)``, checking the count and positivity."""
    if text is None:
        return None
    try:
        values = tuple(int(part) for part in text.replace("x", ",").replace(" ", "").split(",") if part)
    except ValueError:
        raise UsageError(f"{what} must be integers separated by commas, not {text!r}") from None
    if count is not None and len(values) != count:
        raise UsageError(f"{what} needs {count} integers, got {text!r}")
    if any(v <= 0 for v in values):
        raise UsageError(f"{what} must be positive integers, not {text!r}")
    return values


def preprocessing_options(
    scale: float | None, mean: str | None, std: str | None, layout: str | None, size: str | None, channels: int | None,
    resize: int | None = None, crop: int | None = None, preset: str | None = None,
    channel_order: str | None = None,
) -> PreprocessingOptions:  # fmt: skip
    """Collect the preprocessing options into the library's dataclass."""
    if scale is not None and not scale > 0:
        raise UsageError(f"--scale must be positive, not {scale}")
    for name, value in (("--resize", resize), ("--crop", crop)):
        if value is not None and value < 1:
            raise UsageError(f"{name} must be a positive number of pixels, not {value}")
    from kernelscope.data.preprocessing import PRESETS

    if preset is not None and preset.lower() not in PRESETS:
        raise UsageError(f"--preset must be one of {', '.join(PRESETS)}, not {preset!r}")
    parsed_size = parse_ints(size, "--size", 2)
    return PreprocessingOptions(
        scale=scale,
        mean=parse_floats(mean, "--mean"),
        std=parse_floats(std, "--std"),
        layout=layout.upper() if layout else None,
        size=(parsed_size[0], parsed_size[1]) if parsed_size else None,
        channels=channels,
        resize=resize,
        crop=crop,
        preset=preset.lower() if preset else None,
        channel_order=channel_order.lower() if channel_order else None,
    )


def providers_for(device: str) -> tuple[str, ...] | None:
    """onnxruntime providers for ``--device auto|cpu|cuda``."""
    from kernelscope.devices import check_device
    from kernelscope.runtime import cuda_provider_problem

    device = check_device(device)
    if device == "auto":
        import onnxruntime as ort

        # onnxruntime-gpu is installed but will not be used: say why, rather than leave the user to wonder
        if "CUDAExecutionProvider" in ort.get_available_providers() and (problem := cuda_provider_problem()):
            from kernelscope.cli.context import error_console

            error_console().print(
                f"note: onnxruntime runs on the CPU: {problem} (--device cpu silences this note)",
                style="dim",
                markup=False,
                soft_wrap=True,
            )
        return None
    if device == "cpu":
        return ("CPUExecutionProvider",)
    if device == "cuda":
        problem = cuda_provider_problem()  # tried once here: the run stops before any work, not at its first session
        if problem:
            raise UsageError(f"--device cuda: onnxruntime cannot run on a GPU here: {problem}; or use --device cpu")
        return ("CUDAExecutionProvider", "CPUExecutionProvider")
    raise UsageError(f"--device must be auto, cpu or cuda, not {device!r}")


def parse_bounds(text: str) -> tuple[float, float]:
    """``"0,1"`` -> ``(0.0, 1.0)``, requiring lo < hi."""
    values = parse_floats(text, "--bounds") or ()
    if len(values) != 2 or not values[0] < values[1]:
        raise UsageError(f"--bounds needs two numbers lo,hi with lo < hi, not {text!r}")
    return (values[0], values[1])


def inspect_config(
    *,
    input_shape: str | None,
    scale: float | None,
    mean: str | None,
    std: str | None,
    layout: str | None,
    size: str | None,
    channels: int | None,
    device: str,
    resize: int | None = None,
    crop: int | None = None,
    preset: str | None = None,
    channel_order: str | None = None,
    epsilons: str | None,
    epsilons_option: str,
    bounds: str,
    **fields: object,
) -> InspectConfig:
    """The library's config from the raw values of the options both commands share (parsed and checked here)."""
    from kernelscope.audit import InspectConfig  # heavy: imported when a command runs, not for --help

    targeting_at = fields.get("targeting_at")
    if targeting_at is not None:
        from kernelscope.attacks.options import check_targeting_at

        fields["targeting_at"] = check_targeting_at(str(targeting_at).lower())
    threads = fields.get("threads")
    if threads is not None:
        if not isinstance(threads, int) or threads < 1:
            raise UsageError(f"--threads must be a positive whole number, not {threads}")
        import torch

        # --threads caps the whole run: the mirror's gradients (torch) as well as onnxruntime's sessions.
        torch.set_num_threads(threads)
    return InspectConfig(
        input_shape=parse_ints(input_shape, "--input-shape", 4),
        preprocessing=preprocessing_options(
            scale, mean, std, layout, size, channels, resize, crop, preset, channel_order
        ),
        providers=providers_for(device),
        device=device.lower(),
        epsilons=parse_floats(epsilons, epsilons_option),
        bounds=parse_bounds(bounds),
        **fields,
    )
