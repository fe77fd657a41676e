"""The network and its training: build it, fit it (one process or several workers), export it."""
