"""Static files of the live view (package data)."""
