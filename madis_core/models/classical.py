"""Classical (not learned) estimators as registry entries, so every model string a user
gives resolves through one registry: ``sgbm`` and ``sgbm-3way`` (OpenCV StereoSGBM,
run by ``madis_core.backends.sgbm``). Their ``max_disparity`` is that of the backend's
default search range (128 disparities); the backend reports the range it really uses."""
from __future__ import annotations

from madis_core.models.registry import ModelMeta, register_classical

#: OpenCV's disparities are fixed point with 4 fractional bits
SGBM_DELTA_D = 1.0 / 16.0
SGBM_DEFAULT_DISPARITIES = 128

for _name, _mode, _what in (("sgbm", "sgbm", "5-direction SGBM, the accurate mode"),
                            ("sgbm-3way", "3way", "3-way SGBM, the fast mode")):
    register_classical(_name, ModelMeta(family="sgbm", learned=False, max_disparity=SGBM_DEFAULT_DISPARITIES - 1,
                                        delta_d=SGBM_DELTA_D, backend="sgbm", backend_options={"mode": _mode}),
                       f"OpenCV StereoSGBM, {_what}; holes where it finds no match")
