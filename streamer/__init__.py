"""streamer: label every frame of a camera, video, image folder or network stream."""

__version__ = "0.1.0"
