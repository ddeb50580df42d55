"""Reading image files: decoded in full and upright, or one InputError that names the file."""

import os

from PIL import Image, UnidentifiedImageError

from .errors import InputError
from .transforms import upright as turn_upright

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
_READ_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def load_image(path: str | os.PathLike, *, upright: bool = True) -> Image.Image:
    """The decoded image at ``path`` in its own mode (``preprocess`` converts it to RGB).

    ``upright``: apply the EXIF orientation, as photo viewers do (phone photos are stored sideways);
    False keeps the stored pixels, as COCO's annotations do. Raises InputError if unreadable.
    """
    try:
        with Image.open(path) as image:
            image.load()
            return turn_upright(image) if upright else image
    except _READ_ERRORS as err:
        raise _unreadable(path, err) from err


def check_image(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of the stored image at ``path``; InputError unless it opens as an image. Reads
    the header only (fast): truncated pixel data is found by ``load_image``."""
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except _READ_ERRORS as err:
        raise _unreadable(path, err) from err


def _unreadable(path: str | os.PathLike, err: Exception) -> InputError:
    return InputError(f"cannot read image {path} ({err}): pass a JPEG, PNG, BMP, WebP or TIFF file")
