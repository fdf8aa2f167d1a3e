"""mmadapt: measure whether a prompt, retrieval, an adapter or a full fine-tune adapts a model to your domain.

Library first — the CLI is a thin layer over these functions::

    import mmadapt
    recipe = mmadapt.load_recipe("recipes/text/zentrix-support.yaml")
    result = mmadapt.run(recipe)
    print(result.metrics, result.costs)
    loaded = mmadapt.load_artifact(result.version_dir)
    loaded.predictor.predict(["Which port does Zentrix listen on?"])
    table = mmadapt.compare(recipe, ["base", "prompt+retrieval", "prompt+adapter"])
    advice = mmadapt.advise(recipe, privacy="internal", latency_ms=800, gpu_hours=4, release_cadence="monthly")
    app = mmadapt.create_app(["runs/zentrix-support"])   # OpenAI-compatible ASGI app (mmadapt serve)

A new modality is one folder and one call: ``mmadapt.register_modality("name", "package.module:Class")``
(see DESIGN.md).
"""

from mmadapt.errors import MmadaptError

__version__ = "0.1.0"

# public name -> (module, attribute); imported on first use, so importing mmadapt does not import torch
_LAZY = {
    "load_recipe": ("mmadapt.recipe", "load_recipe"),
    "run": ("mmadapt.engine.runner", "run"),
    "load_artifact": ("mmadapt.engine.runner", "load_artifact"),
    "evaluate": ("mmadapt.engine.evaluate", "evaluate"),
    "run_batch": ("mmadapt.engine.batch", "run_batch"),
    "export": ("mmadapt.engine.export", "export"),
    "compare": ("mmadapt.govern.compare", "compare"),
    "advise": ("mmadapt.govern.advise", "advise_recipe"),
    "ab_test": ("mmadapt.govern.ab", "ab_test"),
    "drift": ("mmadapt.govern.drift", "drift"),
    "create_app": ("mmadapt.serve.app", "create_app"),
    "run_suite": ("mmadapt.govern.suites", "run_suite"),
    "load_suite": ("mmadapt.evalspec", "load_suite"),
    "register_modality": ("mmadapt.protocols", "register_modality"),
    "get_modality": ("mmadapt.protocols", "get_modality"),
}

__all__ = ["MmadaptError", "__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'mmadapt' has no attribute {name!r}")
