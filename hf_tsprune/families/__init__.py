"""One file per model family; importing this package imports every module in it, and each registers its family
(`hf_tsprune.register_family`). Adding a family is adding a file here.

A family file imports its optional package only inside the functions that use it, so every family registers (as
unavailable where its package is missing) with the core dependencies alone; `hf_tsprune.families()` lists them.
"""

import importlib
import pkgutil

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")
