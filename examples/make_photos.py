"""Re-create the bundled photos from scikit-image's sample data (see README.md here).

python examples/make_photos.py
"""

from pathlib import Path

import cv2
from skimage import data

PHOTOS = {
    "cat.jpg": data.chelsea,
    "coffee.jpg": data.coffee,
    "motorcycle.jpg": lambda: data.stereo_motorcycle()[0],
}

if __name__ == "__main__":
    here = Path(__file__).parent
    for filename, load in PHOTOS.items():
        rgb = load()
        cv2.imwrite(str(here / filename), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
        print(f"{here / filename}: {rgb.shape[1]}x{rgb.shape[0]}")
