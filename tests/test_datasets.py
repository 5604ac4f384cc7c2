import json

import pytest
import torch
from PIL import Image

from captum_saco.datasets import (
    fashion_mnist,
    fashion_mnist_metadata,
    load_fashion_mnist_samples,
    load_fashion_mnist_vit,
)

# The shipped model reaches about 85-89% on the full test set; the shipped
# images are a stratified sample of it.
MIN_SAMPLE_ACCURACY = 0.8


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return load_fashion_mnist_vit()


def test_shipped_model_classifies_the_shipped_images_accurately(model) -> None:
    samples = load_fashion_mnist_samples()
    with torch.no_grad():
        predicted = model(samples.images).argmax(1)
    accuracy = (predicted == samples.labels).float().mean().item()
    assert accuracy >= MIN_SAMPLE_ACCURACY
    assert accuracy == pytest.approx(fashion_mnist_metadata()["sample_accuracy"], abs=1e-3)


def test_recorded_test_accuracy_meets_the_target() -> None:
    meta = fashion_mnist_metadata()
    assert meta["test_accuracy"] >= 0.85
    assert meta["training"]["train_time_s"] > 0


def test_model_is_a_timm_vit_in_eval_mode_with_class_token_pooling(model) -> None:
    from timm.models.vision_transformer import VisionTransformer

    assert isinstance(model, VisionTransformer)
    assert not model.training
    assert model.global_pool == "token" and model.cls_token is not None
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_timm_resolves_the_shipped_data_config_from_the_model(model) -> None:
    from timm.data import resolve_data_config

    config = resolve_data_config(model=model)
    shipped = fashion_mnist_metadata()["data_config"]
    assert config["input_size"] == tuple(shipped["input_size"])
    assert config["mean"] == tuple(shipped["mean"])
    assert config["std"] == tuple(shipped["std"])


def test_weights_load_with_weights_only() -> None:
    state = torch.load(fashion_mnist.DATA_DIR / fashion_mnist.WEIGHTS_FILE, weights_only=True)
    assert all(v.dtype == torch.float32 for v in state.values())


def test_samples_are_normalised_labelled_and_stratified() -> None:
    samples = load_fashion_mnist_samples()
    n = samples.images.shape[0]
    assert samples.images.shape == (n, 1, 28, 28) and samples.images.dtype == torch.float32
    assert samples.labels.shape == (n,) and samples.labels.dtype == torch.long
    assert len(samples.class_names) == 10
    assert torch.bincount(samples.labels, minlength=10).tolist() == [n // 10] * 10
    # Normalised with the training set's statistics: a whole-test-set-like
    # sample has mean near 0 and std near 1.
    assert abs(samples.images.mean().item()) < 0.1
    assert abs(samples.images.std().item() - 1) < 0.1


def test_limit_takes_the_first_images() -> None:
    all_samples = load_fashion_mnist_samples()
    few = load_fashion_mnist_samples(limit=5)
    assert torch.equal(few.images, all_samples.images[:5])
    assert torch.equal(few.labels, all_samples.labels[:5])


def test_negative_limit_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="limit"):
        load_fashion_mnist_samples(limit=-1)


def test_metadata_is_a_fresh_copy_each_call() -> None:
    meta = fashion_mnist_metadata()
    meta["class_names"].clear()
    assert len(fashion_mnist_metadata()["class_names"]) == 10
    json.dumps(meta)


def test_missing_data_file_is_a_clear_file_not_found_error(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(fashion_mnist, "DATA_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="embedded Fashion-MNIST file"):
        load_fashion_mnist_samples()


def test_pngs_of_the_shipped_images_read_back_as_the_shipped_tensors(tmp_path) -> None:
    from PIL import Image

    from captum_saco.datasets import fashion_mnist_transform

    raw = torch.load(fashion_mnist.DATA_DIR / fashion_mnist.SAMPLES_FILE, weights_only=True)
    transform = fashion_mnist_transform()
    for i in range(4):
        Image.fromarray(raw["images"][i].numpy()).save(tmp_path / f"{i}.png")
    read = torch.stack([transform(Image.open(tmp_path / f"{i}.png")) for i in range(4)])
    assert torch.equal(read, load_fashion_mnist_samples(limit=4).images)


def test_the_embedded_transform_makes_any_image_grey_28_by_28() -> None:
    from PIL import Image

    from captum_saco.datasets import fashion_mnist_transform

    image = Image.new("RGB", (50, 40), (255, 255, 255))
    x = fashion_mnist_transform()(image)
    meta = fashion_mnist_metadata()["data_config"]
    expected = (1 - meta["mean"][0]) / meta["std"][0]
    assert x.shape == (1, 28, 28) and torch.allclose(x, torch.full_like(x, expected))


def make_files(root, names) -> None:
    from PIL import Image

    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (5, 5), 7).save(root / name)


def test_class_subfolders_are_labelled_by_their_sorted_position_and_read_recursively(
    tmp_path,
) -> None:
    from captum_saco.datasets import ImageFiles

    make_files(tmp_path, ["n02/b.png", "n01/x/a.png", "n01/c.png", "n03/.hidden.png"])
    (tmp_path / "n01" / ".cache").mkdir()
    make_files(tmp_path, ["n01/.cache/z.png"])
    data = ImageFiles(tmp_path, lambda image: torch.zeros(1), mode="L")
    assert data.classes == ["n01", "n02", "n03"]
    assert [data.key(i) for i in range(len(data))] == ["n01/c.png", "n01/x/a.png", "n02/b.png"]
    assert [label for _, label in data.samples] == [0, 0, 1]


def test_a_flat_folder_is_unlabelled_and_limit_keeps_the_first_files(tmp_path) -> None:
    from captum_saco.datasets import UNLABELLED, ImageFiles

    make_files(tmp_path, ["b.png", "a.png", "c.png"])
    data = ImageFiles(tmp_path, lambda image: torch.tensor(image.size), limit=2)
    assert data.classes == [] and [data.key(i) for i in range(len(data))] == ["a.png", "b.png"]
    image, label = data[1]
    assert image.tolist() == [5, 5] and label == UNLABELLED


@pytest.mark.parametrize(
    "names, match", [([], "holds no files"), (["a.png", "cls/b.png"], "mixes files and class")]
)
def test_folders_that_are_not_a_data_set_are_value_errors(tmp_path, names, match) -> None:
    from captum_saco.datasets import ImageFiles

    make_files(tmp_path, names)
    with pytest.raises(ValueError, match=match):
        ImageFiles(tmp_path, lambda image: image)


def test_a_missing_folder_is_a_value_error(tmp_path) -> None:
    from captum_saco.datasets import ImageFiles

    with pytest.raises(ValueError, match="is not a folder"):
        ImageFiles(tmp_path / "nope", lambda image: image)


def test_only_regular_files_are_read_and_linked_folders_are_followed_once(tmp_path) -> None:
    import os

    from captum_saco.datasets import ImageFiles

    flat = tmp_path / "flat"
    make_files(flat, ["a.png"])
    os.mkfifo(flat / "pipe.png")  # opening it would wait forever
    assert [p.name for p, _ in ImageFiles(flat, lambda image: image).samples] == ["a.png"]
    classes = tmp_path / "classes"
    make_files(classes, ["cat/own.png"])
    make_files(tmp_path, ["elsewhere/linked.png"])
    (classes / "cat" / "more").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere" / "loop").symlink_to(classes / "cat")  # a link loop ends
    data = ImageFiles(classes, lambda image: image)
    assert [data.key(i) for i in range(len(data))] == ["cat/more/linked.png", "cat/own.png"]


def test_sixteen_bit_grey_images_are_scaled_to_eight_bits_not_clipped(tmp_path) -> None:
    import numpy as np
    from PIL import Image

    from captum_saco.datasets import ImageFiles, fashion_mnist_transform

    ramp = np.linspace(0, 255, 28 * 28).round().reshape(28, 28).astype(np.uint8)
    Image.fromarray(ramp).save(tmp_path / "8.png")
    Image.fromarray(ramp.astype(np.uint16) * 257).save(tmp_path / "16.png")  # the same picture
    with Image.open(tmp_path / "16.png") as image:
        assert image.mode.startswith("I")
    data = ImageFiles(tmp_path, fashion_mnist_transform(), mode="L")
    sixteen, eight = (data[[data.key(i) for i in range(2)].index(f"{b}.png")][0] for b in (16, 8))
    torch.testing.assert_close(sixteen, eight, rtol=0, atol=0)
    with Image.open(tmp_path / "16.png") as image:  # the transform alone, too
        torch.testing.assert_close(fashion_mnist_transform()(image), eight, rtol=0, atol=0)


def test_image_files_turn_photos_upright_by_their_exif_orientation(tmp_path) -> None:
    from torchvision.transforms.functional import to_tensor

    from captum_saco.datasets import ImageFiles

    image = Image.new("RGB", (4, 2), "black")
    image.putpixel((0, 0), (255, 255, 255))  # top left as stored
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display", as phones write
    image.save(tmp_path / "photo.jpg", exif=exif, quality=100)
    x, _ = ImageFiles(tmp_path, to_tensor)[0]
    assert x.shape == (3, 4, 2)  # shown upright: 2 wide, 4 high
    assert x[:, 0, 1].min() > 0.8  # the stored top left is now the top right


def test_image_files_composite_transparency_on_white(tmp_path) -> None:
    from torchvision.transforms.functional import to_tensor

    from captum_saco.datasets import BACKGROUND, ImageFiles

    image = Image.new("RGBA", (2, 1), (0, 0, 0, 0))  # transparent black
    image.putpixel((1, 0), (255, 0, 0, 255))  # opaque red
    image.save(tmp_path / "logo.png")
    Image.new("LA", (2, 1), (0, 0)).save(tmp_path / "grey.png")
    x, _ = ImageFiles(tmp_path, to_tensor)[1]  # logo.png, after grey.png
    grey, _ = ImageFiles(tmp_path, to_tensor, mode="L")[0]
    assert BACKGROUND == (255, 255, 255)
    assert x[:, 0, 0].tolist() == [1.0, 1.0, 1.0] and x[:, 0, 1].tolist() == [1.0, 0.0, 0.0]
    assert grey.flatten().tolist() == [1.0, 1.0]


def test_image_files_label_class_folders_by_a_given_index(tmp_path) -> None:
    from torchvision.transforms.functional import to_tensor

    from captum_saco.datasets import ImageFiles

    for name in ["cat", "dog"]:
        (tmp_path / name).mkdir()
        Image.new("RGB", (2, 2)).save(tmp_path / name / "1.png")
    data = ImageFiles(tmp_path, to_tensor, class_to_idx={"cat": 281, "dog": 207})
    assert [label for _, label in data.samples] == [281, 207]
    with pytest.raises(ValueError, match="class_to_idx: no index for the class folder 'dog'"):
        ImageFiles(tmp_path, to_tensor, class_to_idx={"cat": 281})
