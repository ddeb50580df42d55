"""Reading image files: decoded in full and upright, or one InputError that names the file."""

import contextlib
import os
from collections.abc import Iterator

from PIL import Image, UnidentifiedImageError

from .errors import InputError, check_bool, check_path
from .transforms import pil_to_rgb
from .transforms import upright as turn_upright

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_READ_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError)


def load_image(path: str | os.PathLike, *, upright: bool = True) -> Image.Image:
    """The decoded image at ``path`` in its own mode (``preprocess`` converts it to RGB), but for 16-
    and 32-bit images, converted to 8-bit RGB here so that pixel values outside their range are
    reported with the file's name.

    ``upright``: apply the EXIF orientation, as photo viewers do (phone photos are stored sideways);
    False keeps the stored pixels, as COCO's annotations do. Raises InputError if unreadable.
    """
    check_path("path", path)
    check_bool("upright", upright)
    with _reading(path), Image.open(path) as image:
        image.load()
        image = turn_upright(image) if upright else image
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        return pil_to_rgb(image, f"image {path}")
    return image


def check_image(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of the stored image at ``path``; InputError unless it opens as an image. Reads
    the header only (fast): truncated pixel data is found by ``load_image``."""
    with _reading(check_path("path", path)), Image.open(path) as image:
        return image.height, image.width


@contextlib.contextmanager
def _reading(path: str | os.PathLike) -> Iterator[None]:
    """Pillow's errors as one InputError naming ``path`` and the fix. Pillow refuses images of over
    twice ``Image.MAX_IMAGE_PIXELS`` as possible decompression bombs (and warns of those over it)."""
    try:
        yield
    except Image.DecompressionBombError as err:
        raise InputError(
            f"cannot read image {path} ({err}): downscale the file, or raise PIL.Image.MAX_IMAGE_PIXELS "
            "if you trust it"
        ) from err
    except _READ_ERRORS as err:
        raise InputError(
            f"cannot read image {path} ({err}): pass a JPEG, PNG, BMP, GIF, WebP or TIFF file"
        ) from err
