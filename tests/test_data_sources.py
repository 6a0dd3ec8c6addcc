"""Official data sets (CIFAR-10 pickles, MNIST idx files, look-up, download) and load_dataset dispatch.

Everything is built in tmp_path: tiny fake CIFAR batches and idx files; downloads go to a local HTTP
server or file:// URLs. The last tests use ../shared/data when it exists and skip otherwise.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from kernelscope.data import OFFICIAL_DATASETS, ImageDataset, load_dataset, official
from kernelscope.data.official import load_official, read_idx, restricted_loads
from kernelscope.errors import DataError

from local_server import closed_port_url, serve

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

TEST_N = 4
TRAIN_PER_BATCH = 2


def one_line(exc: pytest.ExceptionInfo[DataError]) -> str:
    message = str(exc.value)
    assert message and "\n" not in message
    return message


@pytest.fixture(autouse=True)
def isolated_roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep the real cache and $KERNELSCOPE_DATA out of every test; returns the fake cache root."""
    cache_home = tmp_path / "xdg-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home))
    monkeypatch.delenv("KERNELSCOPE_DATA", raising=False)
    return cache_home / "kernelscope"


# --------------------------------------------------------------------------------------------- builders


def cifar_batch(n: int, seed: int, *, str_keys: bool = False) -> tuple[dict, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).tolist()
    batch = {b"batch_label": b"fake", b"labels": labels, b"data": data, b"filenames": [b"f.png"] * n}
    if str_keys:
        batch = {key.decode(): value for key, value in batch.items()}
    return batch, data, np.array(labels)


def cifar_files(protocol: int = 2, str_keys: bool = False) -> tuple[dict[str, bytes], dict[str, tuple]]:
    """Pickled fake batches by file name, and (data, labels) per split for checking."""
    files: dict[str, bytes] = {}
    expected: dict[str, tuple] = {}
    batch, data, labels = cifar_batch(TEST_N, 0, str_keys=str_keys)
    files["test_batch"] = pickle.dumps(batch, protocol=protocol)
    expected["test"] = (data, labels)
    train = []
    for index in range(1, 6):
        batch, data, labels = cifar_batch(TRAIN_PER_BATCH, index, str_keys=str_keys)
        files[f"data_batch_{index}"] = pickle.dumps(batch, protocol=protocol)
        train.append((data, labels))
    expected["train"] = (np.concatenate([d for d, _ in train]), np.concatenate([lab for _, lab in train]))
    names = [n.encode() for n in official.CIFAR10_CLASSES]
    names[0] = b"plane"  # distinguishes "read from batches.meta" from "fell back to the official list"
    files["batches.meta"] = pickle.dumps({b"label_names": names, b"num_vis": 3072}, protocol=protocol)
    return files, expected


def write_cifar_folder(root: Path, files: dict[str, bytes]) -> Path:
    folder = root / official.CIFAR_FOLDER
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def write_cifar_archive(path: Path, files: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        folder = tarfile.TarInfo(official.CIFAR_FOLDER)
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        for name, data in files.items():
            info = tarfile.TarInfo(f"{official.CIFAR_FOLDER}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def expected_images(data: np.ndarray) -> np.ndarray:
    """Reference CHW->HWC conversion written element by element (independent of the reshape trick)."""
    n = data.shape[0]
    out = np.empty((n, 32, 32, 3), dtype=np.uint8)
    for channel in range(3):
        out[..., channel] = data[:, channel * 1024 : (channel + 1) * 1024].reshape(n, 32, 32)
    return out


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_mnist(folder: Path, split: str, n: int = 5, *, gz: bool = True, seed: int = 0) -> tuple:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    image_name, label_name = official.IDX_FILES[split]
    for base, payload in ((image_name, idx_bytes(images, 2051)), (label_name, idx_bytes(labels, 2049))):
        if gz:
            (folder / f"{base}.gz").write_bytes(gzip.compress(payload, mtime=0))
        else:
            (folder / base).write_bytes(payload)
    return images, labels


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------------------------- CIFAR-10


@pytest.mark.parametrize("split", ["test", "train"])
@pytest.mark.parametrize("layout", ["archive", "folder"])
def test_cifar_archive_and_folder(tmp_path: Path, split: str, layout: str) -> None:
    files, expected = cifar_files()
    root = tmp_path / "data"
    if layout == "archive":
        write_cifar_archive(root / "cifar10" / official.CIFAR_ARCHIVE, files)
    else:
        write_cifar_folder(root, files)
    dataset = load_official("cifar10", split=split, data_dir=root, download=False)
    data, labels = expected[split]
    assert dataset.name == "cifar10"
    assert dataset.images.dtype == np.uint8
    assert dataset.images.shape == (len(labels), 32, 32, 3)
    np.testing.assert_array_equal(dataset.images, expected_images(data))
    np.testing.assert_array_equal(dataset.labels, labels)
    assert dataset.labels.dtype == np.int64
    assert dataset.num_classes == 10
    assert dataset.class_names is not None and dataset.class_names[0] == "plane"


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_batches_from_python3_pickles(tmp_path: Path, protocol: int) -> None:
    files, expected = cifar_files(protocol=protocol, str_keys=True)
    write_cifar_folder(tmp_path, files)
    dataset = load_official("cifar10", data_dir=tmp_path, download=False)
    np.testing.assert_array_equal(dataset.images, expected_images(expected["test"][0]))


@pytest.mark.parametrize("protocol", [0, 2])
def test_cifar_batches_naming_numpy_core_like_the_official_release(tmp_path: Path, protocol: int) -> None:
    # The official batches were written by numpy 1.x, whose pickles name numpy.core.multiarray.
    files, expected = cifar_files(protocol=protocol)
    legacy = {name: data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray") for name, data in files.items()}
    assert b"numpy.core.multiarray" in legacy["test_batch"]
    write_cifar_folder(tmp_path, legacy)
    dataset = load_official("cifar10", data_dir=tmp_path, download=False)
    np.testing.assert_array_equal(dataset.images, expected_images(expected["test"][0]))


def test_cifar_without_meta_uses_official_names(tmp_path: Path) -> None:
    files, _ = cifar_files()
    del files["batches.meta"]
    write_cifar_folder(tmp_path, files)
    assert load_official("cifar10", data_dir=tmp_path, download=False).class_names == official.CIFAR10_CLASSES


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_os_system_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps({b"data": _Evil(marker)}, protocol=2)
    with pytest.raises(DataError, match="refused") as info:
        restricted_loads(payload, what="evil")
    one_line(info)
    assert not marker.exists()


def test_malicious_batch_in_folder_and_archive_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    files, _ = cifar_files()
    files["test_batch"] = pickle.dumps(_Evil(marker), protocol=2)
    write_cifar_folder(tmp_path / "folder", files)
    write_cifar_archive(tmp_path / "archive" / official.CIFAR_ARCHIVE, files)
    for root in ("folder", "archive"):
        with pytest.raises(DataError, match=r"os.system|posix.system") as info:
            load_official("cifar10", data_dir=tmp_path / root, download=False)
        one_line(info)
    assert not marker.exists()


@pytest.mark.parametrize(
    "content, match",
    [
        (b"not a pickle at all", "not a valid"),
        (pickle.dumps([1, 2, 3], protocol=2), "not a CIFAR-10 batch"),
        (pickle.dumps({b"data": np.zeros((2, 5), np.uint8), b"labels": [0, 1]}, protocol=2), "shape"),
        (
            pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, protocol=2),
            "2 images but 1",
        ),
        (pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [10]}, protocol=2), "outside 0..9"),
    ],
)
def test_damaged_cifar_batches(tmp_path: Path, content: bytes, match: str) -> None:
    files, _ = cifar_files()
    files["test_batch"] = content
    write_cifar_folder(tmp_path, files)
    with pytest.raises(DataError, match=match) as info:
        load_official("cifar10", data_dir=tmp_path, download=False)
    one_line(info)


def test_damaged_and_incomplete_cifar_archives(tmp_path: Path) -> None:
    broken = tmp_path / "broken" / official.CIFAR_ARCHIVE
    broken.parent.mkdir()
    broken.write_bytes(gzip.compress(b"garbage" * 100)[:50])
    with pytest.raises(DataError, match="cannot read") as info:
        load_official("cifar10", data_dir=broken.parent, download=False)
    one_line(info)
    files, _ = cifar_files()
    del files["test_batch"]
    partial = write_cifar_archive(tmp_path / "partial" / official.CIFAR_ARCHIVE, files)
    with pytest.raises(DataError, match="lacks") as info:
        load_official("cifar10", data_dir=partial.parent, download=False)
    one_line(info)


# -------------------------------------------------------------------------------------------- MNIST (idx)


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("split", ["test", "train"])
def test_mnist_idx_files(tmp_path: Path, gz: bool, split: str) -> None:
    images, labels = write_mnist(tmp_path / "mnist", split, gz=gz)
    for data_dir in (tmp_path, tmp_path / "mnist"):  # the root or the data set's own folder
        dataset = load_official("mnist", split=split, data_dir=data_dir, download=False)
        assert dataset.images.shape == (5, 28, 28, 1) and dataset.images.dtype == np.uint8
        np.testing.assert_array_equal(dataset.images[..., 0], images)
        np.testing.assert_array_equal(dataset.labels, labels)
        assert dataset.class_names == tuple("0123456789") and dataset.num_classes == 10
        assert dataset.images.flags.writeable


def test_fashion_mnist_names(tmp_path: Path) -> None:
    write_mnist(tmp_path / "fashion-mnist", "test")
    dataset = load_official("fashion-mnist", data_dir=tmp_path, download=False)
    assert dataset.name == "fashion-mnist"
    assert dataset.class_names is not None and dataset.class_names[0] == "T-shirt/top"
    assert dataset.class_names[-1] == "Ankle boot"


@given(
    shape=st.tuples(st.integers(0, 4), st.integers(1, 5), st.integers(1, 5)),
    gz=st.booleans(),
)
@settings(max_examples=25, deadline=None)
def test_idx_round_trip(tmp_path_factory: pytest.TempPathFactory, shape: tuple, gz: bool) -> None:
    array = np.arange(int(np.prod(shape)), dtype=np.uint8).reshape(shape)
    path = tmp_path_factory.mktemp("idx") / "x-idx3-ubyte"
    payload = idx_bytes(array, 2051)
    path.write_bytes(gzip.compress(payload) if gz else payload)
    np.testing.assert_array_equal(read_idx(path, 2051), array)


@pytest.mark.parametrize(
    "payload, match",
    [
        (idx_bytes(np.zeros(3, np.uint8), 2049), "magic number 2049"),
        (idx_bytes(np.zeros((2, 28, 28), np.uint8), 2051)[:-10], "truncated"),
        (b"\x00\x00", "magic number None"),
        (b"\x1f\x8b\x08\x00garbage", "decompress"),
    ],
)
def test_bad_idx_files(tmp_path: Path, payload: bytes, match: str) -> None:
    write_mnist(tmp_path, "test")
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(payload)
    with pytest.raises(DataError, match=match) as info:
        load_official("mnist", data_dir=tmp_path, download=False)
    one_line(info)


def test_idx_image_and_label_counts_must_match(tmp_path: Path) -> None:
    write_mnist(tmp_path, "test", n=5)
    labels = gzip.compress(idx_bytes(np.zeros(4, np.uint8), 2049))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(labels)
    with pytest.raises(DataError, match=r"5 images but .* 4 labels") as info:
        load_official("mnist", data_dir=tmp_path, download=False)
    one_line(info)


# -------------------------------------------------------------------------------------- look-up and download


def test_lookup_order_data_dir_env_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_roots: Path) -> None:
    write_mnist(isolated_roots / "mnist", "test", n=3)
    assert len(load_official("mnist", download=False)) == 3  # cache
    write_mnist(tmp_path / "env", "test", n=4)
    monkeypatch.setenv("KERNELSCOPE_DATA", str(tmp_path / "env"))
    assert len(load_official("mnist", download=False)) == 4  # env before cache
    write_mnist(tmp_path / "arg" / "mnist", "test", n=2)
    assert len(load_official("mnist", data_dir=tmp_path / "arg", download=False)) == 2  # argument first
    assert len(load_official("mnist", data_dir=tmp_path / "empty", download=False)) == 4  # falls through


def test_missing_without_download_names_files(tmp_path: Path, isolated_roots: Path) -> None:
    with pytest.raises(DataError) as info:
        load_official("mnist", data_dir=tmp_path / "d", download=False)
    message = one_line(info)
    assert "t10k-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message
    assert "train-" not in message  # only the requested split is needed
    assert str(tmp_path / "d" / "mnist") in message
    assert official.MIRRORS["mnist"][0] in message


def test_only_the_requested_split_is_needed(tmp_path: Path) -> None:
    write_mnist(tmp_path, "train")
    assert len(load_official("mnist", split="train", data_dir=tmp_path, download=False)) == 5
    with pytest.raises(DataError, match="t10k"):
        load_official("mnist", split="test", data_dir=tmp_path, download=False)


def _mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, split: str) -> tuple[Path, tuple]:
    """A folder with fake official files whose md5s are registered as the official ones."""
    www = tmp_path / "www"
    expected = write_mnist(www, split)
    table = dict(official.IDX_MD5[name])
    for file in www.iterdir():
        table[file.name] = md5(file)
    monkeypatch.setitem(official.IDX_MD5, name, table)
    return www, expected


def test_download_over_http_with_progress_and_mirror_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    www, (images, labels) = _mirror(tmp_path, monkeypatch, "mnist", "test")
    calls: list[tuple[int, int | None]] = []
    with serve(www) as base:
        monkeypatch.setitem(official.MIRRORS, "mnist", (closed_port_url(), base))
        dataset = load_dataset("MNIST", data_dir=tmp_path / "data", on_progress=lambda d, t: calls.append((d, t)))
    np.testing.assert_array_equal(dataset.images[..., 0], images)
    np.testing.assert_array_equal(dataset.labels, labels)
    target = tmp_path / "data" / "mnist"
    assert sorted(p.name for p in target.iterdir()) == [
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ]
    assert calls and calls[-1][0] == calls[-1][1]
    # Now it is on disk: no network needed any more.
    monkeypatch.setitem(official.MIRRORS, "mnist", (closed_port_url(),))
    assert len(load_dataset("mnist", data_dir=tmp_path / "data", download=False)) == 5


def test_download_from_file_url_into_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_roots: Path
) -> None:
    www, _ = _mirror(tmp_path, monkeypatch, "fashion-mnist", "test")
    monkeypatch.setitem(official.MIRRORS, "fashion-mnist", (www.as_uri() + "/",))
    dataset = load_dataset("fmnist")
    assert dataset.name == "fashion-mnist" and len(dataset) == 5
    assert (isolated_roots / "fashion-mnist" / "t10k-images-idx3-ubyte.gz").is_file()


def test_download_md5_mismatch_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    www = tmp_path / "www"
    write_mnist(www, "test")  # md5s differ from the registered official ones
    monkeypatch.setitem(official.MIRRORS, "mnist", (www.as_uri() + "/",))
    with pytest.raises(DataError, match="md5") as info:
        load_dataset("mnist", data_dir=tmp_path / "data")
    one_line(info)
    assert list((tmp_path / "data" / "mnist").iterdir()) == []


def test_offline_download_names_files_url_and_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = closed_port_url()
    monkeypatch.setitem(official.MIRRORS, "mnist", (url,))
    with pytest.raises(DataError) as info:
        load_dataset("mnist", data_dir=tmp_path / "data")
    message = one_line(info)
    for piece in (
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
        url,
        str(tmp_path / "data" / "mnist"),
    ):
        assert piece in message


def test_offline_cifar_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_roots: Path) -> None:
    url = closed_port_url()
    monkeypatch.setitem(official.MIRRORS, "cifar10", (url,))
    with pytest.raises(DataError) as info:
        load_dataset("cifar10")
    message = one_line(info)
    assert official.CIFAR_ARCHIVE in message and url in message and str(isolated_roots / "cifar10") in message


def test_cifar_download_from_file_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files, expected = cifar_files()
    archive = write_cifar_archive(tmp_path / "www" / official.CIFAR_ARCHIVE, files)
    monkeypatch.setattr(official, "CIFAR_ARCHIVE_MD5", md5(archive))
    monkeypatch.setitem(official.MIRRORS, "cifar10", (archive.parent.as_uri() + "/",))
    dataset = load_dataset("CIFAR-10", split="train", data_dir=tmp_path / "data")
    np.testing.assert_array_equal(dataset.labels, expected["train"][1])
    assert (tmp_path / "data" / "cifar10" / official.CIFAR_ARCHIVE).is_file()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_data_dir_downloads_into_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_roots: Path
) -> None:
    www, _ = _mirror(tmp_path, monkeypatch, "mnist", "test")
    monkeypatch.setitem(official.MIRRORS, "mnist", (www.as_uri() + "/",))
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert len(load_dataset("mnist", data_dir=locked)) == 5
    finally:
        locked.chmod(0o755)
    assert (isolated_roots / "mnist" / "t10k-labels-idx1-ubyte.gz").is_file()


@pytest.mark.parametrize("name, split, match", [("imagenet", "test", "unknown data set"), ("mnist", "val", "split")])
def test_bad_name_or_split(name: str, split: str, match: str) -> None:
    with pytest.raises(DataError, match=match) as info:
        load_official(name, split=split)
    one_line(info)


# ------------------------------------------------------------------------------------------ load_dataset


def write_png_folder(root: Path) -> Path:
    for index, name in enumerate(["cat", "dog"]):
        (root / name).mkdir(parents=True)
        Image.fromarray(np.full((4, 4, 3), index * 50, np.uint8)).save(root / name / "a.png")
    return root


def test_names_are_case_insensitive_with_aliases(tmp_path: Path) -> None:
    write_mnist(tmp_path / "fashion-mnist", "test")
    write_mnist(tmp_path / "mnist", "test")
    for spec in ("fashion-mnist", "Fashion_MNIST", "fmnist", "FashionMNIST"):
        assert load_dataset(spec, data_dir=tmp_path, download=False).name == "fashion-mnist"
    assert load_dataset(" Mnist ", data_dir=tmp_path, download=False).name == "mnist"
    assert OFFICIAL_DATASETS == ("cifar10", "mnist", "fashion-mnist")


def test_missing_path_message(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_dataset(str(tmp_path / "nothing-here"))
    message = one_line(info)
    assert message.startswith("no such data set or file:") and "cifar10, mnist, fashion-mnist" in message
    with pytest.raises(DataError, match="known names"):
        load_dataset("cifar100")


def test_official_folders_by_path(tmp_path: Path) -> None:
    files, _ = cifar_files()
    batches = write_cifar_folder(tmp_path / "c", files)
    assert load_dataset(str(tmp_path / "c")).name == "cifar10"
    assert load_dataset(str(batches), split="train").images.shape == (10, 32, 32, 3)
    write_mnist(tmp_path / "m", "test", gz=False)
    assert load_dataset(str(tmp_path / "m")).name == "mnist"
    write_mnist(tmp_path / "my-fashion", "test")
    assert load_dataset(str(tmp_path / "my-fashion")).name == "fashion-mnist"  # told apart by folder name
    with pytest.raises(DataError, match="no train split") as info:
        load_dataset(str(tmp_path / "m"), split="train")
    one_line(info)


def test_official_archive_by_path_even_renamed(tmp_path: Path) -> None:
    files, expected = cifar_files()
    archive = write_cifar_archive(tmp_path / official.CIFAR_ARCHIVE, files)
    assert len(load_dataset(str(archive))) == TEST_N
    renamed = archive.rename(tmp_path / "cifar.tgz")
    np.testing.assert_array_equal(load_dataset(str(renamed)).labels, expected["test"][1])


def test_npz_tar_and_folder_paths(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros((3, 4, 4, 3), np.uint8), y=np.array([0, 1, 2]))
    assert load_dataset(str(tmp_path / "d.npz")).name == "d"
    folder = write_png_folder(tmp_path / "pets")
    assert load_dataset(str(folder)).class_names == ("cat", "dog")
    with tarfile.open(tmp_path / "pets.tar", "w") as tar:
        tar.add(folder / "cat" / "a.png", "cat/a.png")
        tar.add(folder / "dog" / "a.png", "dog/a.png")
    dataset = load_dataset(str(tmp_path / "pets.tar"), size=(2, 3), channels=1)
    assert dataset.images.shape == (2, 2, 3, 1)


def test_folders_of_splits(tmp_path: Path) -> None:
    write_png_folder(tmp_path / "splits" / "train")
    write_png_folder(tmp_path / "splits" / "test")
    (tmp_path / "splits" / "test" / "dog" / "b.png").write_bytes((tmp_path / "splits/test/dog/a.png").read_bytes())
    assert len(load_dataset(str(tmp_path / "splits"))) == 3
    assert len(load_dataset(str(tmp_path / "splits"), split="train")) == 2
    tars = tmp_path / "tars"
    tars.mkdir()
    with tarfile.open(tars / "test.tar", "w") as tar:
        tar.add(tmp_path / "splits" / "test", "")
    assert len(load_dataset(str(tars))) == 3
    with pytest.raises(DataError, match=r"no train.tar") as info:
        load_dataset(str(tars), split="train")
    one_line(info)


def test_unknown_file_type(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("1,2,3")
    with pytest.raises(DataError, match="don't know how to read") as info:
        load_dataset(str(tmp_path / "data.csv"))
    one_line(info)


# ------------------------------------------------------------------------------------ real data, if present


def test_real_mnist_test_set() -> None:
    folder = SHARED_DATA / "mnist"
    if not (folder / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real MNIST not found in {folder}")
    for data_dir in (folder, SHARED_DATA):
        dataset = load_dataset("mnist", data_dir=data_dir, download=False)
        assert isinstance(dataset, ImageDataset)
        assert dataset.images.shape == (10000, 28, 28, 1)
        assert np.bincount(dataset.labels).tolist()[:2] == [980, 1135]  # the official class counts


def test_real_cifar10_jpeg_test_tar() -> None:
    tar = SHARED_DATA / "cifar10-jpg" / "test.tar"
    if not tar.is_file():
        pytest.skip(f"CIFAR-10 JPEG tar not found at {tar}")
    start = time.perf_counter()
    dataset = load_dataset(str(tar))
    assert time.perf_counter() - start < 30
    assert dataset.images.shape == (10000, 32, 32, 3)
    assert dataset.class_names == official.CIFAR10_CLASSES
    assert np.bincount(dataset.labels).tolist() == [1000] * 10
