"""mmadapt: measure whether a prompt, retrieval, an adapter or a full fine-tune adapts a model to your domain.

Library first — the CLI is a thin layer over these functions::

    import mmadapt
    recipe = mmadapt.load_recipe("recipes/text/zentrix-support.yaml")
    result = mmadapt.run(recipe)
    print(result.metrics, result.costs)
    loaded = mmadapt.load_artifact(result.version_dir)
    loaded.predictor.predict(["Which port does Zentrix listen on?"])
"""

from mmadapt.errors import MmadaptError

__version__ = "0.1.0"

__all__ = ["MmadaptError", "load_recipe", "run", "load_artifact", "evaluate", "__version__"]


def __getattr__(name):  # lazy: importing mmadapt does not import torch
    if name == "load_recipe":
        from mmadapt.recipe import load_recipe

        return load_recipe
    if name == "run":
        from mmadapt.engine.runner import run

        return run
    if name == "load_artifact":
        from mmadapt.engine.runner import load_artifact

        return load_artifact
    if name == "evaluate":
        from mmadapt.engine.evaluate import evaluate

        return evaluate
    raise AttributeError(f"module 'mmadapt' has no attribute {name!r}")
