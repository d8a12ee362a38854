"""SMPL-family body-model files.

`smpl_file.load_smpl_model(path)` reads an SMPL / SMPL+H / SMPL-X model file (`.npz`, or the
official `.pkl` without needing chumpy) into a dict of plain NumPy arrays. The package holds no
model data itself: users pass their own licensed model files.
"""
