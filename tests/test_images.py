"""veca_deploy.images: the one image reader of the examples and calibration folders."""

from __future__ import annotations

import numpy as np
import pytest

from veca_deploy.errors import InputError, QuantizationError
from veca_deploy.images import image_files, read_image


def test_image_files_sorted_typed_and_not_hidden(tmp_path):
    for name in ("b.png", "a.npy", ".c.png", "notes.txt", "D.JPG"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in image_files(tmp_path)] == ["D.JPG", "a.npy", "b.png"]
    with pytest.raises(InputError, match="not a folder"):
        image_files(tmp_path / "missing")


def test_read_image_modes_and_refusals(tmp_path):
    pil = pytest.importorskip("PIL.Image")
    grey = (np.arange(48, dtype=np.uint8).reshape(6, 8) * 5)
    pil.fromarray(grey).save(tmp_path / "g.png")
    assert read_image(tmp_path / "g.png").shape == (6, 8, 3)
    assert np.array_equal(read_image(tmp_path / "g.png", keep_grey=True), grey)
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(InputError, match="bad.jpg: not a readable image"):
        read_image(tmp_path / "bad.jpg")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(InputError, match="not a readable .npy"):
        read_image(tmp_path / "obj.npy")  # pickled object arrays are never loaded


def test_calibration_folder_keeps_its_error_type(tmp_path):
    from veca_deploy.calibration.data import ImageFiles

    (tmp_path / "bad.png").write_bytes(b"garbage")
    with pytest.raises(QuantizationError, match="bad.png: not a readable image"):
        ImageFiles([tmp_path / "bad.png"])[0]
