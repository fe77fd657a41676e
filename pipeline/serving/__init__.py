"""Using the model: REST (serve.py), the draw-a-digit page (demo.py), image files (predict.py)."""
