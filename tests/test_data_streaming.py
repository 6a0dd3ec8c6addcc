"""Image folders too large to hold decoded stream: each batch is decoded when it is read, from a directory or
an uncompressed tar, and every result equals the folder decoded up front."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
from PIL import Image

import kernelscope.data.folders as folders
from kernelscope.cli.app import main
from kernelscope.data.folders import Geometry, load_image_folder
from kernelscope.data.preprocessing import select_examples
from kernelscope.data.streamed import StreamedImages
from kernelscope.errors import DataError

from builders import conv_classifier, save


def _photo(rng, height, width):
    coarse = rng.integers(0, 256, size=(height // 8 + 1, width // 8 + 1, 3)).astype(np.uint8)
    return Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Three classes of JPEG photos of several sizes, as a directory and as an uncompressed tar of it."""
    root = tmp_path_factory.mktemp("photos") / "val"
    rng = np.random.default_rng(1)
    sizes = [(40, 52), (48, 36), (64, 64), (45, 60)]
    for c in range(3):
        (root / f"class{c}").mkdir(parents=True)
        for i, (h, w) in enumerate(sizes):
            _photo(rng, h, w).save(root / f"class{c}" / f"{i}.jpg", quality=90)
    archive = root.parent / "val.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(root, arcname="val")
    return root, archive


@pytest.fixture
def decodes(monkeypatch):
    """Counts full decodes (headers read to learn sizes do not count)."""
    calls = []
    original = folders._decode

    def counting(entry, geometry):
        calls.append(entry.where)
        return original(entry, geometry)

    monkeypatch.setattr(folders, "_decode", counting)
    return calls


@pytest.mark.parametrize("source", ["directory", "tar"])
def test_streamed_images_equal_the_images_decoded_up_front(photos, source, decodes):
    path = photos[0] if source == "directory" else photos[1]
    eager = load_image_folder(path, resize=36, crop=32, stream=False)
    decodes.clear()
    streamed = load_image_folder(path, resize=36, crop=32, stream=True)
    assert isinstance(streamed.images, StreamedImages) and decodes == []  # nothing decoded yet: headers only
    assert streamed.images.shape == eager.images.shape == (12, 32, 32, 3)
    assert np.array_equal(streamed.labels, eager.labels) and streamed.class_names == eager.class_names
    assert np.array_equal(streamed.images[3:7], eager.images[3:7]) and len(decodes) == 4
    order = np.array([9, 0, 5])
    assert np.array_equal(streamed.images[order], eager.images[order])
    assert np.array_equal(streamed.images[11], eager.images[11])
    assert np.array_equal(np.asarray(streamed.images), eager.images)
    subset, reference = select_examples(streamed, 5, seed=3), select_examples(eager, 5, seed=3)
    assert isinstance(subset.images, StreamedImages)  # a subset stays undecoded too
    assert np.array_equal(subset.images[:], reference.images) and np.array_equal(subset.labels, reference.labels)


def test_large_folders_stream_and_small_ones_are_decoded_once(photos, monkeypatch):
    assert isinstance(load_image_folder(photos[0], size=(32, 32)).images, np.ndarray)
    monkeypatch.setattr(folders, "STREAM_ABOVE_BYTES", 12 * 32 * 32 * 3 - 1)
    assert isinstance(load_image_folder(photos[0], size=(32, 32)).images, StreamedImages)


@pytest.mark.parametrize("width,height", [(52, 40), (36, 48), (64, 64), (300, 97), (97, 300)])
def test_the_header_size_is_the_size_the_geometry_gives(width, height):
    image = Image.new("RGB", (width, height))
    for geometry in (Geometry(resize=36), Geometry(resize=36, crop=32), Geometry(size=(20, 30)), Geometry()):
        out = geometry.apply(image, "x")
        assert geometry.output_size(width, height, "x") == (out.height, out.width)
    crop = min(width, height) + 1
    with pytest.raises(DataError, match=f"smaller than --crop {crop}"):
        Geometry(crop=crop).output_size(width, height, "x")


def test_sizes_that_still_differ_are_refused_from_the_headers(photos, decodes):
    with pytest.raises(DataError, match="images differ in size"):
        load_image_folder(photos[0], resize=36, stream=True)  # no crop: each photo keeps its aspect ratio
    assert decodes == []


def test_inspect_on_a_streamed_folder_writes_the_same_report(photos, tmp_path, monkeypatch, capsys):
    model = save(conv_classifier(out_channels=4, classes=3, size=16), tmp_path / "m.onnx")
    docs = []
    for threshold in (1 << 40, 0):  # decoded up front, then streamed
        monkeypatch.setattr(folders, "STREAM_ABOVE_BYTES", threshold)
        out = tmp_path / f"r{threshold}.json"
        args = ["inspect", str(model), "-d", str(photos[1]), "--resize", "20", "--crop", "16", "--json", str(out)]
        assert main([*args, "--eps", "0.02", "--bootstrap", "20", "-q"]) == 0, capsys.readouterr().err
        doc = json.loads(out.read_text())
        for part in ("timings", "execution"):
            doc.pop(part)
        docs.append(doc)
    assert docs[0] == docs[1]


def test_a_damaged_image_body_is_named_when_its_batch_is_decoded(photos, tmp_path, capsys, monkeypatch):
    root = tmp_path / "broken"
    for c in range(2):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(3):
            _photo(np.random.default_rng(c * 3 + i), 32, 32).save(root / f"c{c}" / f"{i}.jpg", quality=90)
    victim = root / "c1" / "2.jpg"
    victim.write_bytes(victim.read_bytes()[:-200])  # the header survives, the last pixels do not
    data = load_image_folder(root, stream=True)
    assert data.images.shape == (6, 32, 32, 3)
    data.images[:5]
    with pytest.raises(DataError, match=r"2\.jpg"):
        data.images[5:]
    model = save(conv_classifier(out_channels=4, classes=2, size=32), tmp_path / "m.onnx")
    monkeypatch.setattr(folders, "STREAM_ABOVE_BYTES", 0)
    code = main(["inspect", str(model), "-d", str(root), "--no-attack", "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "2.jpg" in err and len(err.splitlines()) == 1
