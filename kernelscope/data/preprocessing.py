"""Turning raw pixels into what a particular model expects, and deciding what that is.

The model sees ``(pixel * scale - mean) / std`` in its layout (NCHW or NHWC), at its size and channel
count, in its input dtype. Each setting is taken, in this order, from: an explicit option, the model's
``kernelscope.preprocessing`` metadata, the model's input shape (layout, size, channels), the data set's
preset (scale, mean, std for cifar10 / mnist / fashion-mnist; for other data, the preset of the data set
named by the model's ``kernelscope.dataset`` metadata), and finally the data itself. Where each
came from is recorded in :attr:`Preprocessing.sources` so reports can say it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from kernelscope.data.dataset import ImageDataset
from kernelscope.errors import DataError, UsageError

#: Normalization commonly used with each official data set (images scaled to [0, 1] first).
PRESETS: dict[str, dict[str, object]] = {
    "cifar10": {"scale": 1 / 255, "mean": (0.4914, 0.4822, 0.4465), "std": (0.2470, 0.2435, 0.2616)},
    "mnist": {"scale": 1 / 255, "mean": (0.1307,), "std": (0.3081,)},
    "fashion-mnist": {"scale": 1 / 255, "mean": (0.2860,), "std": (0.3530,)},
    # The normalization of torchvision's and most ImageNet model zoos' evaluation transform (RGB, NCHW).
    "imagenet": {"scale": 1 / 255, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)},
}

#: NHW: a 3-D batch of one-channel images (N, H, W), as some tf2onnx MNIST exports take.
LAYOUTS = ("NCHW", "NHWC", "NHW")


@dataclass(frozen=True)
class PreprocessingOptions:
    """Settings given explicitly by the user; ``None`` means "decide from the model and data"."""

    scale: float | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    layout: str | None = None
    size: tuple[int, int] | None = None
    channels: int | None = None
    resize: int | None = None  # shorter side to this many pixels before ``crop`` (image folders)
    crop: int | None = None  # centred square crop (image folders)
    preset: str | None = None  # a key of PRESETS: its scale / mean / std unless given one by one
    channel_order: str | None = None  # "rgb" or "bgr": the order of the model's three colour channels


@dataclass(frozen=True)
class Preprocessing:
    """The exact transformation from raw pixels to the model's input tensor."""

    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    layout: str
    size: tuple[int, int]
    channels: int
    input_dtype: str
    sources: Mapping[str, str] = field(default_factory=dict)
    #: "bgr" for models trained on blue-green-red images (Caffe, OpenCV): the pixels' channels are reversed
    #: before the normalization, whose mean and std are then in the model's (BGR) order
    channel_order: str = "rgb"

    def to_model_input(self, pixels: np.ndarray) -> np.ndarray:
        """Convert a batch of raw pixels (B, H, W, C) into the model's input tensor."""
        return self.normalize(self.fit(pixels))

    def fit(self, pixels: np.ndarray) -> np.ndarray:
        """Raw pixels converted to the model's channel count and size (still 0..255, still NHWC)."""
        pixels = _match_channels(pixels, self.channels)
        if pixels.shape[1:3] != self.size:
            pixels = _resize(pixels, self.size)
        return pixels

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """Pixels already at the model's size and channels (B, H, W, C; 0..255) -> the model's input."""
        dtype = np.dtype(self.input_dtype)
        if self.channel_order == "bgr":
            pixels = pixels[..., ::-1]
        if dtype == np.uint8:
            values = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
        else:
            mean = np.asarray(self.mean, dtype=np.float32)
            std = np.asarray(self.std, dtype=np.float32)
            values = (pixels.astype(np.float32) * np.float32(self.scale) - mean) / std
        if self.layout == "NCHW":
            values = values.transpose(0, 3, 1, 2)
        elif self.layout == "NHW":
            values = values[..., 0]
        return np.ascontiguousarray(values.astype(dtype, copy=False))

    def describe(self) -> dict[str, object]:
        """A JSON-ready description (the report's ``data.preprocessing``)."""
        return {
            "scale": self.scale,
            "mean": list(self.mean),
            "std": list(self.std),
            "layout": self.layout,
            "size": list(self.size),
            "channels": self.channels,
            "input_dtype": self.input_dtype,
            "channel_order": self.channel_order,
            "sources": dict(self.sources),
        }


def _match_channels(pixels: np.ndarray, channels: int) -> np.ndarray:
    have = pixels.shape[3]
    if have == channels:
        return pixels
    if have == 1 and channels == 3:
        return np.repeat(pixels, 3, axis=3)
    if have == 3 and channels == 1:
        # ITU-R 601-2 luma, as Pillow's convert("L").
        weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
        gray = pixels.astype(np.float32) @ weights
        if pixels.dtype == np.uint8:
            gray = np.clip(np.rint(gray), 0, 255).astype(np.uint8)
        return gray[..., None]
    raise DataError(f"cannot convert {have}-channel images to {channels} channels")


def _resize(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    height, width = size
    out = np.empty((pixels.shape[0], height, width, pixels.shape[3]), dtype=pixels.dtype)
    for i, image in enumerate(pixels):
        for c in range(image.shape[2]):
            plane = image[..., c]
            mode_image = (
                Image.fromarray(plane) if plane.dtype == np.uint8 else Image.fromarray(plane.astype(np.float32))
            )
            out[i, ..., c] = np.asarray(mode_image.resize((width, height), Image.BILINEAR))
    return out


def _static(dim: object) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


def _guess_layout(shape: tuple | None) -> str | None:
    if shape is not None and len(shape) == 3:
        return "NHW"
    if shape is None or len(shape) != 4:
        return None
    c_first, c_last = _static(shape[1]), _static(shape[3])
    if c_first in (1, 3) and c_last not in (1, 3):
        return "NCHW"
    if c_last in (1, 3) and c_first not in (1, 3):
        return "NHWC"
    return None


def _per_channel(values: tuple[float, ...], channels: int, what: str) -> tuple[float, ...]:
    if len(values) == 1:
        return tuple(values) * channels
    if len(values) != channels:
        raise UsageError(
            f"{what} has {len(values)} values but the model takes {channels} channels; give 1 or {channels}"
        )
    return tuple(values)


def resolve_preprocessing(
    *,
    input_shape: tuple | None,
    input_dtype: str,
    metadata: Mapping[str, object] | None,
    dataset: ImageDataset,
    options: PreprocessingOptions | None = None,
    preset: str | None = None,
) -> Preprocessing:
    """Decide the preprocessing for ``dataset`` fed to a model with this input (see module docstring).

    Raises :class:`DataError` when the images do not fit the model (size, channels) and no option asks
    for a conversion, and :class:`UsageError` for options that contradict the model.
    """
    options = options or PreprocessingOptions()
    meta = dict(metadata or {})
    sources: dict[str, str] = {}
    # An explicit --preset, else the data set's own, else the one of the data set the model's metadata names.
    if options.preset is not None and options.preset not in PRESETS:
        raise UsageError(f"--preset must be one of {', '.join(PRESETS)}, not {options.preset!r}")
    preset_name = (
        options.preset
        if options.preset is not None
        else dataset.name
        if dataset.name in PRESETS
        else preset
        if preset in PRESETS
        else None
    )
    preset_values = PRESETS.get(preset_name or "", {})

    # Layout: option > metadata > input shape > NCHW.
    layout = options.layout or meta.get("layout")
    sources["layout"] = "option" if options.layout else "model metadata" if meta.get("layout") else ""
    if layout is None:
        layout = _guess_layout(input_shape)
        sources["layout"] = "model input shape" if layout else "default"
        layout = layout or "NCHW"
    layout = str(layout).upper()
    if layout not in LAYOUTS:
        raise UsageError(f"layout must be NCHW, NHWC or NHW, not {layout!r}")
    rank = len(input_shape) if input_shape is not None else None
    if (layout == "NHW") != (rank == 3) and rank is not None:
        raise UsageError(
            f"layout {layout} does not fit the model's {rank}-D input; NHW is for 3-D (N, H, W) inputs only"
        )

    shape = tuple(input_shape) if input_shape is not None else (None, None, None, None)
    if layout == "NHW":
        model_h, model_w = (_static(d) for d in shape[1:3])
        model_channels = 1
    elif layout == "NCHW":
        model_channels, model_h, model_w = (_static(d) for d in shape[1:4])
    else:
        model_h, model_w, model_channels = (_static(d) for d in shape[1:4])
    model_size = (model_h, model_w) if model_h and model_w else None

    size, sources["size"] = _pick_size(options.size, model_size, meta.get("size"), dataset)
    channels, sources["channels"] = _pick_channels(options.channels, model_channels, meta.get("channels"), dataset)
    if model_channels is not None and model_channels not in (1, 3):
        raise DataError(
            f"the model's input has {model_channels} channels in {layout} layout; if the layout is wrong pass "
            "--layout NHWC or NCHW"
        )

    if np.dtype(input_dtype) == np.uint8:
        # A uint8 input means the model normalizes raw pixels itself.
        scale, mean, std = 1.0, (0.0,), (1.0,)
        for key in ("scale", "mean", "std"):
            sources[key] = "model input is uint8"
        if options.scale is not None or options.mean is not None or options.std is not None:
            raise UsageError("the model takes uint8 pixels and normalizes them itself; drop --scale/--mean/--std")
    else:
        given = options.preset is not None
        scale, sources["scale"] = _pick("scale", options.scale, meta, preset_values, preset_name, 1 / 255, given)
        mean, sources["mean"] = _pick("mean", options.mean, meta, preset_values, preset_name, (0.0,), given)
        std, sources["std"] = _pick("std", options.std, meta, preset_values, preset_name, (1.0,), given)
    mean = _per_channel(tuple(float(m) for m in _as_tuple(mean)), channels, "mean")
    std = _per_channel(tuple(float(s) for s in _as_tuple(std)), channels, "std")
    if any(s == 0 for s in std):
        raise UsageError("std must not contain 0")
    order, sources["channel_order"] = _channel_order(options.channel_order, meta.get("channel_order"), channels)
    return Preprocessing(
        scale=float(scale),
        mean=mean,
        std=std,
        layout=layout,
        size=size,
        channels=channels,
        input_dtype=str(np.dtype(input_dtype)),
        sources=sources,
        channel_order=order,
    )


#: The colour orders a model may expect of its three channels.
CHANNEL_ORDERS = ("rgb", "bgr")


def _channel_order(option: str | None, metadata: object, channels: int) -> tuple[str, str]:
    """The channel order (``--channel-order``, else the model's metadata, else RGB) and where it came from."""
    if option is not None:
        order, source = str(option).lower(), "option"
    elif metadata is not None:
        order, source = str(metadata).lower(), "model metadata"
    else:
        return "rgb", "default"
    if order not in CHANNEL_ORDERS:
        where = "--channel-order" if source == "option" else "the model metadata's channel_order"
        raise UsageError(f"{where} must be rgb or bgr, not {order!r}")
    if order == "bgr" and channels != 3:
        raise UsageError(f"a BGR channel order needs 3-channel input; this model takes {channels} channel(s)")
    return order, source


def _as_tuple(value: object) -> tuple:
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return (value,)


def _pick(key, option, meta, preset, preset_name, default, explicit_preset: bool = False):
    if option is not None:
        return option, "option"
    if explicit_preset and key in preset:  # --preset names the normalization: it outranks the metadata
        return preset[key], f"preset {preset_name} (option)"
    if key in meta:
        return meta[key], "model metadata"
    if key in preset:
        return preset[key], f"preset {preset_name}"
    return default, "default"


def _pick_size(option, model_size, meta_size, dataset: ImageDataset) -> tuple[tuple[int, int], str]:
    data_size = dataset.image_size
    if option is not None:
        size = (int(option[0]), int(option[1]))
        if model_size is not None and size != model_size:
            raise UsageError(
                f"--size {size[0]},{size[1]} contradicts the model's input size {model_size[0]}x{model_size[1]}"
            )
        return size, "option"
    if model_size is not None:
        if data_size != model_size and 1 in model_size and np.prod(model_size) == np.prod(data_size):
            # A vector of every pixel (an MLP exported without its Flatten): resizing would not flatten the image.
            values = int(np.prod(model_size))
            raise DataError(
                f"the model takes a flat vector of {values} values ({model_size[0]}x{model_size[1]}), "
                f"not {data_size[0]}x{data_size[1]} images: kernelscope feeds images as they are and does not flatten "
                "them (--size would resize, not flatten); export the model with an image input and a Flatten inside"
            )
        if data_size != model_size:
            raise DataError(
                f"the images are {data_size[0]}x{data_size[1]} but the model takes {model_size[0]}x{model_size[1]}; "
                f"pass --size {model_size[0]},{model_size[1]} to resize them, or use matching data"
            )
        return model_size, "model input shape"
    if meta_size is not None:
        size = (int(meta_size[0]), int(meta_size[1]))
        if data_size != size:
            raise DataError(
                f"the images are {data_size[0]}x{data_size[1]} but the model's metadata says {size[0]}x{size[1]}; "
                f"pass --size {size[0]},{size[1]} to resize them"
            )
        return size, "model metadata"
    return data_size, "data"


def _pick_channels(option, model_channels, meta_channels, dataset: ImageDataset) -> tuple[int, str]:
    have = dataset.channels
    if option is not None:
        if option not in (1, 3):
            raise UsageError(f"--channels must be 1 or 3, not {option}")
        if model_channels is not None and option != model_channels:
            raise UsageError(f"--channels {option} contradicts the model's {model_channels} input channels")
        return int(option), "option"
    want, source = (
        (model_channels, "model input shape") if model_channels is not None else (meta_channels, "model metadata")
    )
    if want is None:
        return have, "data"
    if int(want) != have:
        raise DataError(
            f"the images have {have} channel{'s' if have != 1 else ''} but the model takes {want}; pass "
            f"--channels {want} to convert them, or use matching data"
        )
    return int(want), source


def select_examples(dataset: ImageDataset, limit: int | None, seed: int) -> ImageDataset:
    """A seeded random subset of ``limit`` examples (kept in data order), or the whole set."""
    if limit is None:
        return dataset
    if limit <= 0:
        raise UsageError(f"--limit must be a positive number of images, not {limit}")
    if limit >= len(dataset):
        return dataset
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.permutation(len(dataset))[:limit])
    return dataset.subset(chosen)


@dataclass
class PreparedData:
    """A data set plus the preprocessing that fits it to one model, streamed in batches."""

    dataset: ImageDataset
    preprocessing: Preprocessing

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def labels(self) -> np.ndarray:
        """All labels, int64."""
        return self.dataset.labels

    def pixel_batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (pixels at the model's size and channels, (B, H, W, C) on 0..255, labels) batches."""
        if batch_size <= 0:
            raise UsageError(f"--batch-size must be positive, not {batch_size}")
        for start in range(0, len(self.dataset), batch_size):
            stop = start + batch_size
            yield self.preprocessing.fit(self.dataset.images[start:stop]), self.dataset.labels[start:stop]

    def batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (model input, labels) batches; only one preprocessed batch exists at a time."""
        if batch_size <= 0:
            raise UsageError(f"--batch-size must be positive, not {batch_size}")
        for start in range(0, len(self.dataset), batch_size):
            stop = start + batch_size
            yield (
                self.preprocessing.to_model_input(self.dataset.images[start:stop]),
                self.dataset.labels[start:stop],
            )
