"""Classify image files, `.npy` arrays or folders with the registered champion (make predict).

    python -m pipeline.predict digit.png scans/ --csv predictions.csv

The entry point by the name users know; the work is in pipeline/serving/classify_files.py.
"""

from pipeline.serving.classify_files import main

if __name__ == "__main__":
    main()
