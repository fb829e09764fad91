"""Model runtimes: one small interface, implementations found through entry points.

A runtime turns a model file into a LoadedModel that can predict. The built-in ones (onnx,
xgboost, torch) and any third party's are registered in the `mesh.runtimes` entry-point group:

    [project.entry-points."mesh.runtimes"]
    mytype = "my_package.runtime:MyRuntime"

Framework imports happen only when a runtime is first used, so a pod without torch installed
still serves ONNX and XGBoost models.
"""
