"""Device telemetry read without root (today: NVIDIA Jetson, :mod:`streamer.telemetry.jetson`)."""
