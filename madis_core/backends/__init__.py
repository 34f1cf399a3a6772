"""Estimator backends: ``base`` (the contract every backend implements, the backend
registry, input checks; no torch), ``sgbm`` (OpenCV StereoSGBM), ``torch_backend`` (every
network of the model registry) and ``onnx_backend`` (onnxruntime, optional).
``madis_core.estimator.build_estimator`` imports them on first use; this package imports
nothing, so the contract can be imported without torch.
"""
