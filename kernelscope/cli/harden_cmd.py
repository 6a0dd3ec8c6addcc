"""``kernelscope harden``: write a first-layer-hardened ONNX file, with an honest before/after."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kernelscope.cli import options as opt
from kernelscope.cli.context import console, progress_for
from kernelscope.cli.figures import check_report_outputs, write_report_outputs
from kernelscope.errors import AuditFailed
from kernelscope.io import check_output_path


def harden_command(
    model: Annotated[Path, typer.Argument(help="Classifier to harden: .onnx, or TorchScript .pt (torch.jit.save).")],
    data: opt.DataOption,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Where to write the hardened model: ONNX (.onnx); a TorchScript input is written back as "
            "TorchScript under any other name.",
        ),
    ],
    noise: Annotated[
        float | None,
        typer.Option(help="Force this noise level ε_n (skip the search); the file is written whatever it measures."),
    ] = None,
    svd: Annotated[
        str, typer.Option(help="hard: keep σ ≥ τ (Gavish–Donoho hard threshold); cap: σ -> min(σ, τ).")
    ] = "hard",
    clean_budget: Annotated[
        float,
        typer.Option(help="Largest clean-accuracy loss, in accuracy points (1 = one point), a candidate may cost."),
    ] = 1.0,
    eps: Annotated[
        float | None,
        typer.Option(help="The audit ε the search optimizes, in [0, 1] pixel units (default 0.01 colour, 0.1 gray)."),
    ] = None,
    sweep: Annotated[
        str | None,
        typer.Option(
            "--sweep", help="ε list for the before/after table, e.g. 0.005,0.01 (default: the data's lin sweep)."
        ),
    ] = None,
    val_fraction: Annotated[
        float, typer.Option(help="Share of the images used to search; the rest judges the result.")
    ] = 0.5,
    method: Annotated[
        str,
        typer.Option(
            help="svd (the paper's first-layer transform), jacobian (Fidel et al. / Jakubovitz & Giryes), "
            "sensitivity (Suri & Evans), adversarial (FGSM-RS with a TRADES-style clean term), or all."
        ),
    ] = "svd",
    tune: Annotated[
        str, typer.Option(help="Weights fine-tuning moves: all (every float Conv/Gemm/MatMul) or first-conv.")
    ] = "all",
    tune_batchnorm: Annotated[
        bool, typer.Option("--tune-batchnorm", help="Also tune BatchNormalization scale and shift.")
    ] = False,
    train_data: Annotated[
        str | None,
        typer.Option(help="Labelled training images for fine-tuning (what --data takes; default: its train split)."),
    ] = None,
    train_split: Annotated[str, typer.Option(help="Split of --train-data to read.")] = "train",
    train_limit: Annotated[
        int | None, typer.Option(help="A seeded random subset of this many training images (default 5000).")
    ] = 5000,
    epochs: Annotated[int, typer.Option(help="Fine-tuning epochs; every epoch is a candidate.")] = 3,
    lr: Annotated[float, typer.Option(help="Fine-tuning learning rate (Adam).")] = 1e-3,
    strengths: Annotated[
        str | None,
        typer.Option(help="Grid of the fine-tuning methods' strength, e.g. 0.1,1 (default: per method, see docs)."),
    ] = None,
    lambda_s: Annotated[float, typer.Option(help="λ_S of the jacobian method's neuron-sensitivity term.")] = 0.1,
    pgd_steps: Annotated[int, typer.Option(help="Steps of the held-out judgement's L∞ PGD.")] = 20,
    pgd_restarts: Annotated[int, typer.Option(help="Random restarts of the held-out judgement's PGD.")] = 2,
    force_write: Annotated[
        bool,
        typer.Option(
            "--force-write",
            help="Write the chosen model even when the held-out images do not confirm it or it changes nothing.",
        ),
    ] = False,
    data_dir: opt.DataDirOption = None,
    split: opt.SplitOption = "test",
    download: opt.DownloadOption = True,
    limit: opt.LimitOption = None,
    seed: opt.SeedOption = 0,
    batch_size: opt.BatchSizeOption = 128,
    layer: opt.LayerOption = None,
    output: opt.OutputOption = None,
    input_shape: opt.InputShapeOption = None,
    drop: opt.DropOption = "weights",
    targeting_at: opt.TargetingAtOption = "conv",
    eps_sweep: opt.EpsSweepOption = "lin",
    bounds: opt.BoundsOption = "0,1",
    atol: opt.AtolOption = None,
    device: opt.DeviceOption = "auto",
    threads: opt.ThreadsOption = None,
    memory: opt.MemoryOption = "2GB",
    scale: opt.ScaleOption = None,
    mean: opt.MeanOption = None,
    std: opt.StdOption = None,
    layout: opt.LayoutOption = None,
    size: opt.SizeOption = None,
    resize: opt.ResizeOption = None,
    crop: opt.CropOption = None,
    preset: opt.PresetOption = None,
    channel_order: opt.ChannelOrderOption = None,
    classes: opt.ClassesOption = None,
    channels: opt.ChannelsOption = None,
    json_path: opt.JsonOption = None,
    html_path: opt.HtmlOption = None,
    plots_dir: opt.PlotsOption = None,
    force: opt.ForceOption = False,
    quiet: opt.QuietOption = False,
) -> None:
    """SVD-filter the null kernels and amplify the fragile ones of the first Conv; measure before/after."""
    # Heavy libraries (torch, onnx, onnxruntime) load only when the command runs, so --help stays instant.
    from kernelscope.attacks.pgd import PgdSettings
    from kernelscope.cli.render import render_harden
    from kernelscope.harden import HardenConfig, harden_model, write_hardened
    from kernelscope.harden.finetune import FinetuneSettings
    from kernelscope.harden.pipeline import output_format
    from kernelscope.model.loading import file_format
    from kernelscope.model.memory import parse_memory
    from kernelscope.report.json_report import harden_to_dict

    check_output_path(out, force=force, inputs=(model,))
    output_format(file_format(model), out)  # an ONNX input cannot be written as TorchScript: say so now
    if Path(f"{out}.data").exists():  # the external-data file a hardened copy of an external-data model uses
        check_output_path(Path(f"{out}.data"), force=force, inputs=(model,))
    check_report_outputs(json_path, html_path, plots_dir, force=force, inputs=(model, out), other_outputs=(out,))
    inspect = opt.inspect_config(
        data=data, data_dir=data_dir, split=split, download=download, layer=layer, output=output,
        input_shape=input_shape, drop=drop, limit=limit, seed=seed, batch_size=batch_size, scale=scale, mean=mean,
        std=std, layout=layout, size=size, channels=channels, device=device, threads=threads, bootstrap=0,
        resize=resize, crop=crop, preset=preset, channel_order=channel_order, class_index=classes,
        epsilons=sweep, epsilons_option="--sweep", eps_sweep=eps_sweep, bounds=bounds, atol=atol,
        targeting_at=targeting_at, memory=parse_memory(memory),
    )  # fmt: skip
    config = HardenConfig(
        inspect=inspect,
        noise=noise,
        svd_mode=svd,
        clean_budget=_budget_fraction(clean_budget),
        audit_epsilon=eps,
        val_fraction=val_fraction,
        method=method.lower(),
        tune=tune.lower(),
        tune_batchnorm=tune_batchnorm,
        train_data=train_data,
        train_split=train_split,
        train_limit=train_limit,
        finetune=FinetuneSettings(epochs=epochs, learning_rate=lr, batch_size=batch_size, seed=seed),
        strengths=opt.parse_floats(strengths, "--strengths") if strengths is not None else None,
        lambda_s=lambda_s,
        pgd=PgdSettings(norm="linf", steps=pgd_steps, random_start=True, restarts=pgd_restarts),
        force_write=force_write,
    )
    report = harden_model(model, config, progress=progress_for(quiet))
    if report.hardened is not None:
        write_hardened(report, out)
    render_harden(console(), report, quiet=quiet)
    write_report_outputs(lambda: harden_to_dict(report, inspect), json_path, html_path, plots_dir, quiet=quiet)
    if report.hardened is None:
        raise AuditFailed(_failure(report))


def _budget_fraction(points: float) -> float:
    """--clean-budget in accuracy points -> the library's fraction."""
    from kernelscope.errors import UsageError

    if not (0 <= points <= 100):
        raise UsageError(f"--clean-budget is in accuracy points, between 0 and 100, not {points:g}")
    return points / 100.0


def _failure(report) -> str:
    """The one-line reason for exit code 1."""
    if report.chosen is None:
        return (
            "no candidate improved worst-case accuracy on the validation split within the clean budget; nothing written"
        )
    if report.no_op:
        level = report.first_change_level
        hint = f" (the SVD filter first changes a weight at --noise {level:.4g})" if level is not None else ""
        return f"the chosen change leaves every weight as it was (a no-op); nothing written{hint}"
    return "the held-out images do not confirm the validation pick; nothing written"
