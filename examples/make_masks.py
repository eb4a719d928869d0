"""Redraw the hand-made example masks (white = fill). Coordinates were placed by eye on each photo."""

from PIL import Image, ImageDraw

HERE = __import__("pathlib").Path(__file__).parent


def coffee() -> Image.Image:
    """The spoon: bowl and handle, with a margin for its shadow."""
    mask = Image.new("L", (600, 400), 0)
    draw = ImageDraw.Draw(mask)
    draw.ellipse((318, 232, 412, 332), fill=255)
    draw.polygon([(392, 66), (426, 70), (412, 130), (392, 250), (360, 252), (384, 130)], fill=255)
    return mask


def rocket() -> Image.Image:
    """The right-hand lightning tower (mast and lattice) against the evening sky."""
    mask = Image.new("L", (640, 427), 0)
    draw = ImageDraw.Draw(mask)
    draw.rectangle((438, 118, 456, 200), fill=255)
    draw.polygon([(434, 188), (462, 188), (484, 427), (420, 427)], fill=255)
    return mask


def chelsea() -> Image.Image:
    """Scratches, as on a damaged print: thin strokes across the face."""
    mask = Image.new("L", (451, 300), 0)
    draw = ImageDraw.Draw(mask)
    draw.line([(20, 40), (140, 90), (230, 80), (330, 150)], fill=255, width=5)
    draw.line([(60, 260), (180, 190), (260, 230), (420, 200)], fill=255, width=4)
    draw.line([(380, 20), (300, 120)], fill=255, width=6)
    return mask


if __name__ == "__main__":
    for name, draw_mask in {"coffee": coffee, "rocket": rocket, "chelsea": chelsea}.items():
        draw_mask().save(HERE / f"{name}_mask.png")
