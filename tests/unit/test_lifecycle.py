import torch

from app.evaluate import CheckResult, shift, typical_examples


def test_shift_moves_content_and_fills_with_zeros() -> None:
    image = torch.zeros(1, 1, 4, 4, dtype=torch.uint8)
    image[0, 0, 1, 1] = 9
    moved = shift(image, dx=1, dy=-1)
    assert moved[0, 0, 0, 2] == 9 and moved.sum() == 9
    assert shift(image, 0, 0).equal(image)


def test_typical_examples_are_closest_to_their_class_mean() -> None:
    images = torch.tensor([[0.0], [1.0], [10.0], [100.0], [101.0], [150.0]]).view(6, 1, 1, 1)
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    picked, picked_labels = typical_examples(images, labels, per_class=1)
    assert picked.flatten().tolist() == [1.0, 101.0]  # nearest to means 3.67 and 117
    assert picked_labels.tolist() == [0, 1]


def test_check_passes_at_its_threshold() -> None:
    assert CheckResult("x", 0.9, 0.9).passed
    assert not CheckResult("x", 0.89, 0.9).passed
