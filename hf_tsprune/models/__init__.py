"""Own transformers-5 implementations of models published only as transformers-4 Hub remote code (Time-MoE,
Timer-XL, Sundial).

Each module here holds one model's configuration and model classes, depends on torch and transformers only (so that a
pruned checkpoint can carry it verbatim as remote code), and registers its classes with the transformers Auto classes
under the released `model_type` when imported. Importing this package imports every module in it.
"""

import importlib
import pkgutil

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")
